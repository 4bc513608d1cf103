"""DeepLabV3+ (Chen et al., 2018) with a Keras ResNet50 backbone for ``(S, S, 1)`` grey slices.

Layout::

    grey (S,S,1) -> 3 identical channels -> x255 - ImageNet BGR means ("caffe" preprocessing)
    -> ResNet50 (nested sub-model, outputs a low-level and a high-level feature map)
    high-level -> ASPP: 1x1 | 3x3 rate 6 | 3x3 rate 12 | 3x3 rate 18 | image pooling -> concat -> 1x1
    low-level  -> 1x1 projection to 48 channels
    concat(upsampled ASPP, projection) -> two 3x3 conv -> 1x1 head -> bilinear x4 -> sigmoid

The head's 1x1 convolution is applied before the final bilinear upsampling: both are linear and
bilinear weights sum to one, so this equals "upsample, then 1x1 conv" exactly while keeping the
full-resolution tensor at one channel instead of ``decoder_filters``.

Only stock Keras layers (no ``Lambda``), so ``.keras`` files load with ``safe_mode=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import layers

from lungseg.errors import ConfigError
from lungseg.models._checks import check_fraction, check_int

logger = logging.getLogger(__name__)

#: ImageNet channel means (BGR) of the "caffe" preprocessing the Keras ResNet50 weights expect.
#: The grey input is replicated to 3 channels, so the channel order only affects the means.
IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
#: Output strides of the ResNet50 stages, for messages.
_STAGE_HINT = "conv1_relu (/2), conv2_block3_out (/4), conv3_block4_out (/8), conv4_block6_out (/16)"


def _check_int(name: str, value, minimum: int) -> int:
    return check_int("DeepLabV3+", name, value, minimum)


def _conv_bn_relu(x, filters: int, kernel: int, name: str, dilation: int = 1, bn_momentum: float = 0.99):
    x = layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _resnet50(image_size: int, backbone_weights: str | None) -> keras.Model:
    """Keras ResNet50 without its top, with weights None, 'imagenet' or a weights file."""
    weights: str | None
    if backbone_weights is None or str(backbone_weights).lower() in ("", "none", "null"):
        weights = None
    elif str(backbone_weights).lower() == "imagenet":
        weights = "imagenet"
    else:
        path = Path(backbone_weights).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"file {str(path)!r}: backbone_weights must be None, 'imagenet' or an existing ResNet50 "
                "weights file (no-top .h5 / .weights.h5); this file does not exist"
            )
        weights = str(path)
    try:
        return keras.applications.ResNet50(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3)
        )
    except Exception as exc:  # download failure (offline), bad file, shape mismatch...
        what = "download the ImageNet weights (is the machine offline?)" if weights == "imagenet" \
            else f"load backbone weights from file {weights!r}"
        raise ConfigError(
            f"DeepLabV3+: could not {what}: {type(exc).__name__}: {exc}. "
            "Use backbone_weights: null for random initialisation, or the path of a local weights file."
        ) from exc


def _feature_layer(backbone: keras.Model, layer_name: str, role: str):
    try:
        return backbone.get_layer(layer_name).output
    except ValueError:
        valid = [lyr.name for lyr in backbone.layers if lyr.name.endswith("_out") or lyr.name == "conv1_relu"]
        examples = ", ".join(valid) if valid else _STAGE_HINT
        raise ConfigError(
            f"DeepLabV3+ {role} {layer_name!r} is not a layer of the ResNet50 backbone; "
            f"valid names include {examples} (typical: {_STAGE_HINT})"
        ) from None


def build_deeplabv3plus(
    image_size: int = 224,
    backbone_weights: str | None = None,
    low_level_layer: str = "conv2_block3_out",
    high_level_layer: str = "conv4_block6_out",
    aspp_filters: int = 256,
    decoder_filters: int = 256,
    name: str = "deeplabv3plus",
    low_level_filters: int = 48,
    bn_momentum: float = 0.99,
    *,
    channels: int = 1,
) -> keras.Model:
    """Build DeepLabV3+ mapping ``(S, S, 1)`` float32 images in [0, 1] to ``(S, S, 1)`` probabilities
    (``channels=3``: a 2.5D stack of three neighbouring slices, fed to the backbone as its RGB).

    Args:
        image_size: side ``S``; a multiple of 16, at least 32.
        backbone_weights: ``None`` (random init, offline), ``"imagenet"`` (downloaded by Keras) or
            the path of a ResNet50 no-top weights file.
        low_level_layer: backbone layer feeding the decoder's skip (stride 4 by default).
        high_level_layer: backbone layer feeding ASPP (stride 16 by default).
        aspp_filters: filters of each ASPP branch and of its 1x1 fusion (256 in the paper).
        decoder_filters: filters of the two decoder 3x3 convolutions (256 in the paper).
        name: model name.
        low_level_filters: filters of the low-level 1x1 projection (48 in the paper).
        bn_momentum: moving-average momentum of every BatchNorm layer, the backbone's included.
            Keras' 0.99 needs several hundred steps before the moving statistics (used at
            validation and inference) catch up; short CPU runs from random weights use 0.9.

    Raises:
        ConfigError: bad size, layer name, filter count, or unusable backbone weights.
    """
    _check_int("image_size", image_size, 1)
    if image_size % 16 or image_size < 32:
        raise ConfigError(
            f"image_size {image_size} does not suit architecture 'deeplabv3plus': the ResNet50 backbone "
            f"needs a multiple of 16 that is at least 32 (e.g. {max(2, round(image_size / 16)) * 16})"
        )
    for key, value in (("aspp_filters", aspp_filters), ("decoder_filters", decoder_filters),
                       ("low_level_filters", low_level_filters)):
        _check_int(key, value, 1)
    bn_momentum = check_fraction("DeepLabV3+", "bn_momentum", bn_momentum)

    resnet = _resnet50(image_size, backbone_weights)
    low = _feature_layer(resnet, low_level_layer, "low_level_layer")
    high = _feature_layer(resnet, high_level_layer, "high_level_layer")
    low_size, high_size = int(low.shape[1]), int(high.shape[1])
    if low_size < high_size or low_size % high_size or image_size % low_size:
        raise ConfigError(
            f"DeepLabV3+ low_level_layer {low_level_layer!r} ({low_size} px) must have a finer grid than "
            f"high_level_layer {high_level_layer!r} ({high_size} px); typical: {_STAGE_HINT}"
        )
    for layer in resnet.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = bn_momentum  # read at call time and saved in the layer config
    backbone = keras.Model(resnet.input, [low, high], name="resnet50_backbone")

    if channels not in (1, 3):
        raise ConfigError(f"DeepLabV3+ takes 1 channel or a 2.5D stack of 3 slices (its RGB), got context {channels}")
    inputs = keras.Input(shape=(image_size, image_size, channels), dtype="float32", name="image")
    x = layers.Concatenate(name="grey_to_rgb")([inputs, inputs, inputs]) if channels == 1 else inputs
    x = layers.Rescaling(255.0, name="to_0_255")(x)
    x = layers.Normalization(mean=list(IMAGENET_BGR_MEANS), variance=[1.0, 1.0, 1.0],
                             name="imagenet_mean")(x)
    low_feat, high_feat = backbone(x)

    # ASPP on the high-level features.
    branches = [_conv_bn_relu(high_feat, aspp_filters, 1, "aspp_1x1", bn_momentum=bn_momentum)]
    for rate in (6, 12, 18):
        branches.append(_conv_bn_relu(high_feat, aspp_filters, 3, f"aspp_rate{rate}", dilation=rate,
                                      bn_momentum=bn_momentum))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(high_feat)
    pooled = _conv_bn_relu(pooled, aspp_filters, 1, "aspp_pool_proj", bn_momentum=bn_momentum)
    pooled = layers.UpSampling2D(size=high_size, interpolation="bilinear", name="aspp_pool_up")(pooled)
    branches.append(pooled)
    aspp = layers.Concatenate(name="aspp_concat")(branches)
    aspp = _conv_bn_relu(aspp, aspp_filters, 1, "aspp_out", bn_momentum=bn_momentum)

    # Decoder.
    aspp_up = layers.UpSampling2D(size=low_size // high_size, interpolation="bilinear", name="aspp_up")(aspp)
    low_proj = _conv_bn_relu(low_feat, low_level_filters, 1, "low_level_proj", bn_momentum=bn_momentum)
    x = layers.Concatenate(name="decoder_concat")([aspp_up, low_proj])
    x = _conv_bn_relu(x, decoder_filters, 3, "decoder1", bn_momentum=bn_momentum)
    x = _conv_bn_relu(x, decoder_filters, 3, "decoder2", bn_momentum=bn_momentum)
    logits = layers.Conv2D(1, 1, name="head_conv")(x)
    logits = layers.UpSampling2D(size=image_size // low_size, interpolation="bilinear", name="head_up")(logits)
    outputs = layers.Activation("sigmoid", dtype="float32", name="mask")(logits)
    model = keras.Model(inputs, outputs, name=name)
    logger.debug("Built DeepLabV3+ %s: %d px, weights %s, %d params",
                 name, image_size, backbone_weights, model.count_params())
    return model
