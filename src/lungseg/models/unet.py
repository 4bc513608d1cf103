"""2D U-Net (Ronneberger et al., 2015) for binary segmentation of ``(S, S, 1)`` slices.

Built from stock Keras layers only (no ``Lambda``), so a saved ``.keras`` file loads with
``safe_mode=True`` under any Keras 3 backend.
"""

from __future__ import annotations

import logging

import keras
from keras import layers

from lungseg.errors import ConfigError
from lungseg.models._checks import check_fraction, check_int

logger = logging.getLogger(__name__)


def _check_int(name: str, value, minimum: int) -> int:
    return check_int("U-Net", name, value, minimum)


def _conv_block(x, filters: int, prefix: str, bn_momentum: float = 0.99):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                          name=f"{prefix}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    return x


def build_unet(
    image_size: int = 224,
    base_filters: int = 64,
    depth: int = 4,
    dropout: float = 0.0,
    name: str = "unet",
    bn_momentum: float = 0.99,
    *,
    channels: int = 1,
) -> keras.Model:
    """Build a U-Net mapping ``(S, S, channels)`` float32 images in [0, 1] (1 channel, or a 2.5D stack of
    neighbouring slices) to ``(S, S, 1)`` sigmoid probabilities.

    Encoder level ``k`` (``k = 0 .. depth-1``) has two 3x3 conv + BatchNorm + ReLU with
    ``base_filters * 2**k`` filters, then a 2x2 max-pool; the bottleneck has ``base_filters * 2**depth``
    filters (followed by dropout when ``dropout > 0``); each decoder level upsamples with a 2x2
    ``Conv2DTranspose`` (stride 2), concatenates the skip connection and applies two 3x3 conv + BN +
    ReLU; the head is a 1x1 convolution with a sigmoid (kept in float32 under mixed precision).

    Args:
        image_size: side ``S`` of the square input; must be divisible by ``2**depth``.
        base_filters: filters of the first level (64 in the original paper; 8-16 for CPU runs).
        depth: number of pooling steps.
        dropout: dropout rate in the bottleneck, in [0, 1).
        name: model name.
        bn_momentum: BatchNorm moving-average momentum. Keras' 0.99 needs several hundred steps
            before the moving statistics (used at validation and inference) catch up; short CPU
            runs use 0.9.

    Raises:
        ConfigError: a bad size, depth, filter count, dropout rate or BatchNorm momentum.
    """
    _check_int("image_size", image_size, 1)
    depth = _check_int("depth", depth, 1)
    base_filters = _check_int("base_filters", base_filters, 1)
    dropout = check_fraction("U-Net", "dropout", dropout)
    bn_momentum = check_fraction("U-Net", "bn_momentum", bn_momentum)
    if image_size % (2**depth):
        raise ConfigError(
            f"image_size {image_size} does not suit architecture 'unet' with depth {depth}: it must be "
            f"divisible by 2**depth = {2**depth} (e.g. {max(1, round(image_size / 2**depth)) * 2**depth})"
        )

    channels = _check_int("channels", channels, 1)
    inputs = keras.Input(shape=(image_size, image_size, channels), dtype="float32", name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, f"enc{level + 1}", bn_momentum)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level + 1}_pool")(x)
    x = _conv_block(x, base_filters * 2**depth, "bottleneck", bn_momentum)
    if dropout > 0:
        x = layers.Dropout(float(dropout), name="bottleneck_dropout")(x)
    for level in reversed(range(depth)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level + 1}_up")(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = _conv_block(x, filters, f"dec{level + 1}", bn_momentum)
    logits = layers.Conv2D(1, 1, name="head_conv")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(logits)
    model = keras.Model(inputs, outputs, name=name)
    logger.debug("Built U-Net %s: %d px, base %d, depth %d, %d params",
                 name, image_size, base_filters, depth, model.count_params())
    return model
