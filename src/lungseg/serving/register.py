"""Log ``lungseg-combined`` to the active MLflow run and register a version of it.

The model is an ``mlflow.pyfunc`` model (:class:`lungseg.serving.pyfunc.CombinedSegmentationModel`)
whose one artifact is the bundle folder (:mod:`lungseg.serving.bundle`). It has a signature (one
string column in, two string columns out) and an input example (a small synthetic chest CT).
``mlflow models serve -m models:/lungseg-combined/<version> --env-manager local`` serves it from this
project's environment (``lungseg`` itself is not on PyPI, so MLflow cannot build an environment for it).
"""

from __future__ import annotations

import gzip
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: The logged model's name inside its run.
ARTIFACT_NAME = "lungseg_combined"
PIP_REQUIREMENTS = ["keras>=3.10", "tensorflow~=2.21.0", "nibabel", "opencv-python-headless", "pandas"]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from lungseg.serving.pyfunc import INPUT_COLUMN, OUTPUT_COLUMNS

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]), outputs=Schema([ColSpec("string", c) for c in OUTPUT_COLUMNS])
    )


def example_ct(shape: tuple[int, int, int] = (12, 64, 64), spacing=(5.0, 0.7, 0.7), seed: int = 0) -> bytes:
    """A small synthetic chest CT as gzipped NIfTI bytes (HU, int16, LPS): air, a body, two dark lungs
    and a ground-glass blob in the left one. The model's input example."""
    import nibabel as nib

    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    body = ((yy - h / 2) / (0.42 * h)) ** 2 + ((xx - w / 2) / (0.46 * w)) ** 2 < 1
    lungs = [((yy - h / 2) / (0.28 * h)) ** 2 + ((xx - cx * w) / (0.12 * w)) ** 2 < 1 for cx in (0.32, 0.68)]
    blob = ((yy - h / 2) / (0.08 * h)) ** 2 + ((xx - 0.70 * w) / (0.06 * w)) ** 2 < 1
    ct = np.full(shape, -1000.0, np.float32)
    for k in range(z):
        ct[k][body] = 40
        if 0 < k < z - 1:
            ct[k][lungs[0] | lungs[1]] = -850
            if 2 <= k < z - 2:
                ct[k][blob & lungs[1]] = -450
    ct += np.random.default_rng(seed).normal(0, 10, shape).astype(np.float32)
    sz, sy, sx = spacing
    img = nib.Nifti1Image(np.ascontiguousarray(ct.astype(np.int16).transpose(2, 1, 0)), np.diag([-sx, -sy, sz, 1.0]))
    return gzip.compress(img.to_bytes(), mtime=0)


def log_combined_model(lung: Any, infection: Any, settings: dict[str, Any], registered_name: str | None):
    """Log the combined model to the active MLflow run; register it as ``registered_name`` (None: log only).

    Args:
        lung, infection: ``LoadedModel`` or ``(keras_model, config)`` (see :func:`lungseg.serving.bundle.write_bundle`).
        settings: the ``inference`` settings the served model uses (batch_size, lung_min_ratio, flip_tta,
            guard, limits, precision: the prediction precision unless the loader's ``model_config`` says otherwise).

    Returns:
        MLflow's ``ModelInfo`` (``registered_model_version`` is the new version, when registered).
    """
    import mlflow
    import pandas as pd

    from lungseg.serving.bundle import BUNDLE_ARTIFACT, write_bundle
    from lungseg.serving.pyfunc import INPUT_COLUMN, encode_nifti

    with tempfile.TemporaryDirectory(prefix="lungseg-bundle-") as tmp:
        bundle = write_bundle(Path(tmp) / BUNDLE_ARTIFACT, lung, infection, settings)
        example = pd.DataFrame({INPUT_COLUMN: [encode_nifti(example_ct())]})
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME,
            python_model=str(Path(__file__).with_name("model_code.py")),  # models from code: no pickle
            artifacts={BUNDLE_ARTIFACT: str(bundle)},
            signature=signature(),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            registered_model_name=registered_name,
            metadata={"lungseg_sources": (bundle / "settings.json").read_text()},
            # the default the loader may override: load_model(uri, model_config={"precision": "auto"})
            model_config={"precision": settings["precision"]},
        )
    if registered_name:
        logger.info(
            "registered %s version %s (models:/%s/%s)",
            registered_name,
            info.registered_model_version,
            registered_name,
            info.registered_model_version,
        )
    return info
