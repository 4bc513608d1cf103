"""Segmentation models (U-Net, DeepLabV3+), losses, metrics, the input pipeline and the fit loop.

``keras`` and ``keras.ops`` only, so everything runs under any Keras 3 backend (TensorFlow is the
default). Importing this package registers the custom losses and metrics with Keras, which
``.keras`` files need to load with ``safe_mode=True``.
"""

from lungseg.models.data import SliceSequence, augment_params, split_model_input
from lungseg.models.deeplabv3plus import build_deeplabv3plus
from lungseg.models.factory import (
    ARCHITECTURES,
    allowed_params,
    build_model,
    compile_model,
    custom_objects,
    load_model,
)
from lungseg.models.losses import (
    LOSS_NAMES,
    BCEDiceLoss,
    BCELoss,
    DiceLoss,
    bce,
    bce_dice_loss,
    dice_loss,
    get_loss,
)
from lungseg.models.metrics import DiceCoefficient, IoUScore, get_metrics
from lungseg.models.run import TrainResult, train_variant
from lungseg.models.train import check_training_data, fit, set_seeds, strategy_scope
from lungseg.models.unet import build_unet

__all__ = [
    "ARCHITECTURES",
    "LOSS_NAMES",
    "BCEDiceLoss",
    "BCELoss",
    "DiceCoefficient",
    "DiceLoss",
    "IoUScore",
    "SliceSequence",
    "TrainResult",
    "allowed_params",
    "augment_params",
    "bce",
    "bce_dice_loss",
    "build_deeplabv3plus",
    "build_model",
    "build_unet",
    "check_training_data",
    "compile_model",
    "custom_objects",
    "dice_loss",
    "fit",
    "get_loss",
    "get_metrics",
    "load_model",
    "set_seeds",
    "split_model_input",
    "strategy_scope",
    "train_variant",
]
