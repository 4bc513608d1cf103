"""U-Net and DeepLabV3+ builders, the factory, and .keras round trips with safe_mode=True."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from lungseg.errors import ConfigError, ModelNotFoundError
from lungseg.models import (
    BCEDiceLoss,
    allowed_params,
    build_deeplabv3plus,
    build_model,
    build_unet,
    compile_model,
    load_model,
)

SMALL_DEEPLAB = {"aspp_filters": 8, "decoder_filters": 8, "low_level_filters": 8}


def _x(n=2, s=32, seed=0):
    return np.random.default_rng(seed).random((n, s, s, 1), dtype=np.float32)


def _call(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.fixture(scope="module")
def deeplab():
    return build_deeplabv3plus(32, **SMALL_DEEPLAB)


def test_unet_shapes_sigmoid_range_and_structure():
    model = build_unet(image_size=48, base_filters=4, depth=3, dropout=0.1)
    assert model.input_shape == (None, 48, 48, 1)
    assert model.output_shape == (None, 48, 48, 1)
    out = _call(model, _x(2, 48))
    assert out.dtype == np.float32 and 0.0 <= out.min() and out.max() <= 1.0
    names = {layer.name for layer in model.layers}
    assert {"enc3_pool", "bottleneck_conv2", "bottleneck_dropout", "dec1_up", "dec1_concat", "mask"} <= names
    assert model.get_layer("bottleneck_conv1").filters == 4 * 2**3
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_unet_bad_sizes_raise_config_error():
    with pytest.raises(ConfigError, match=r"image_size 36 .*'unet'.*divisible by 2\*\*depth = 8"):
        build_unet(36, base_filters=4, depth=3)
    with pytest.raises(ConfigError, match="dropout"):
        build_unet(32, base_filters=4, depth=2, dropout=1.0)
    with pytest.raises(ConfigError, match="depth"):
        build_unet(32, base_filters=4, depth=0)
    with pytest.raises(ConfigError, match=r"bn_momentum must be a number in \[0, 1\), got 1.5"):
        build_unet(32, base_filters=4, depth=2, bn_momentum=1.5)


def test_deeplab_round_trips_through_keras_file(deeplab, tmp_path):
    path = tmp_path / "deeplab.keras"
    deeplab.save(path)
    loaded = load_model(path, compile=False)
    x = _x(2, seed=3)
    np.testing.assert_array_equal(_call(loaded, x), _call(deeplab, x))


def test_deeplab_shapes_range_and_one_training_step(deeplab):
    assert deeplab.output_shape == (None, 32, 32, 1)
    out = _call(deeplab, _x())
    assert 0.0 <= out.min() and out.max() <= 1.0
    backbone = deeplab.get_layer("resnet50_backbone")
    assert [t.shape[1] for t in backbone.outputs] == [8, 2]  # stride 4 and stride 16
    assert deeplab.get_layer("aspp_rate18_conv").dilation_rate == (18, 18)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in deeplab.layers)
    compile_model(deeplab, loss="bce_dice", learning_rate=1e-3, run_eagerly=True)
    y = (_x(seed=1) > 0.5).astype(np.float32)
    loss = deeplab.train_on_batch(_x(), y, return_dict=True)["loss"]
    assert np.isfinite(loss)


def test_deeplab_bn_momentum_reaches_every_batchnorm_and_survives_saving(tmp_path):
    model = build_deeplabv3plus(32, bn_momentum=0.9, **SMALL_DEEPLAB)

    def momenta(m):
        found = []
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                found += momenta(layer)
            elif isinstance(layer, keras.layers.BatchNormalization):
                found.append(layer.momentum)
        return found

    got = momenta(model)
    assert len(got) > 50 and set(got) == {0.9}  # ResNet50's own BatchNorms too, not only the head's
    path = tmp_path / "m.keras"
    model.save(path)
    assert set(momenta(load_model(path, compile=False))) == {0.9}
    assert set(momenta(build_deeplabv3plus(32, **SMALL_DEEPLAB))) == {0.99}  # Keras' default
    with pytest.raises(ConfigError, match=r"bn_momentum must be a number in \[0, 1\)"):
        build_deeplabv3plus(32, bn_momentum="fast", **SMALL_DEEPLAB)


def test_deeplab_bad_size_layer_and_weights_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"image_size 40 .*'deeplabv3plus'.*multiple of 16"):
        build_deeplabv3plus(40)
    with pytest.raises(ConfigError, match="does not exist"):
        build_deeplabv3plus(32, backbone_weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ConfigError, match=r"'conv2_block9_out' is not a layer.*conv2_block3_out"):
        build_deeplabv3plus(32, low_level_layer="conv2_block9_out", **SMALL_DEEPLAB)


def test_factory_checks_architecture_and_param_keys():
    model = build_model("unet", 32, {"base_filters": 4, "depth": 2})
    assert model.output_shape == (None, 32, 32, 1)
    with pytest.raises(ConfigError, match=r"unknown parameter 'base_filter'.*did you mean 'base_filters'.*allowed"):
        build_model("unet", 32, {"base_filter": 4})
    with pytest.raises(ConfigError, match="unknown architecture 'segnet'"):
        build_model("segnet", 32, {})
    with pytest.raises(ConfigError, match="image_size 30"):
        build_model("unet", 30, {"depth": 2})
    assert "aspp_filters" in allowed_params("deeplabv3plus") and "image_size" not in allowed_params("unet")


def test_unet_with_custom_loss_and_metrics_round_trips_through_keras_file(tmp_path):
    model = compile_model(build_unet(32, base_filters=4, depth=2), loss="bce_dice", run_eagerly=True)
    x = _x(4)
    y = (x > 0.5).astype(np.float32)
    model.train_on_batch(x, y)  # non-trivial BN statistics and optimizer state
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = load_model(path)
    np.testing.assert_array_equal(_call(loaded, x), _call(model, x))
    assert isinstance(loaded.loss, BCEDiceLoss)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert set(after) == {"loss", "dice", "iou"}
    for key in after:
        assert after[key] == pytest.approx(before[key], rel=1e-6)
    with pytest.raises(ModelNotFoundError, match="no such model file"):
        load_model(tmp_path / "nope.keras")
