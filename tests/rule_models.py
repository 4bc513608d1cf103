"""A hand-weighted Keras model that labels an intensity band: a stand-in for a trained U-Net in tests.

Shared by the inference, serving and hardening tests (importable as ``rule_models``: ``tests/`` is on
``sys.path`` through its ``conftest.py``). Intensities are in the model input's unit range for the
window ``WINDOW`` (HU).
"""

from __future__ import annotations

import numpy as np

WINDOW = (-1250.0, 250.0)


def unit(hu: float) -> float:
    """A HU value in the model input's [0, 1] range for ``WINDOW``."""
    return (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])


def band_model(size: int, lo: float, hi: float):
    """~1 where at least 6 pixels of the 3x3 neighbourhood have a unit intensity in [lo, hi].

    The 3x3 vote drops the thin rings of partial-volume pixels that fall in the band at tissue borders.
    """
    import keras

    a, c = 200.0, 10.0
    inp = keras.Input((size, size, 1))
    ramps = keras.layers.Conv2D(4, 1, activation="relu", name="ramps")(inp)
    band = keras.layers.Conv2D(1, 1, name="band")(ramps)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="vote")(band)
    model = keras.Model(inp, out)
    model.get_layer("ramps").set_weights(
        [np.full((1, 1, 1, 4), a, np.float32), np.array([-a * lo, -a * lo - 1, -a * hi, -a * hi - 1], np.float32)]
    )
    model.get_layer("band").set_weights(
        [np.array([1, -1, -1, 1], np.float32).reshape(1, 1, 4, 1), np.zeros(1, np.float32)]
    )
    model.get_layer("vote").set_weights([np.full((3, 3, 1, 1), c, np.float32), np.array([-5.5 * c], np.float32)])
    return model


def stack_band_model(size: int, lo: float, hi: float, context: int = 3):
    """A 2.5D rule model: ~1 where the band holds in **every** one of the ``context`` stacked slices
    (then the same 3x3 vote as :func:`band_model`). A lesion on fewer consecutive slices than the stack
    is not marked, nor the end slices of a longer one: what only a correctly built stack gives."""
    import keras

    a, c = 200.0, 10.0
    inp = keras.Input((size, size, context))
    ramps = keras.layers.Conv2D(4 * context, 1, activation="relu", name="ramps")(inp)
    band = keras.layers.Conv2D(context, 1, name="band")(ramps)
    every = keras.layers.Conv2D(1, 1, activation="relu", name="every")(band)
    out = keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="vote")(every)
    model = keras.Model(inp, out)
    w = np.zeros((1, 1, context, 4 * context), np.float32)
    b = np.zeros(4 * context, np.float32)
    wb = np.zeros((1, 1, 4 * context, context), np.float32)
    for ch in range(context):
        w[0, 0, ch, 4 * ch : 4 * ch + 4] = a
        b[4 * ch : 4 * ch + 4] = [-a * lo, -a * lo - 1, -a * hi, -a * hi - 1]
        wb[0, 0, 4 * ch : 4 * ch + 4, ch] = [1, -1, -1, 1]
    model.get_layer("ramps").set_weights([w, b])
    model.get_layer("band").set_weights([wb, np.zeros(context, np.float32)])
    model.get_layer("every").set_weights([np.ones((1, 1, context, 1), np.float32), np.array([1.0 - context], np.float32)])
    model.get_layer("vote").set_weights([np.full((3, 3, 1, 1), c, np.float32), np.array([-5.5 * c], np.float32)])
    return model
