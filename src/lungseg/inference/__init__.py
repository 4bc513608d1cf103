"""Inference on a new CT: read it, segment the lungs then the infection, report, write outputs.

Public API (imported lazily, so that reading an input does not import Keras)::

    from lungseg.inference import read_input, load_model_spec, Segmenter, make_report, write_outputs

* :mod:`lungseg.inference.readers`  ``read_input(path, limits) -> (Volume, source_kind)``
* :mod:`lungseg.inference.models`   ``LoadedModel``, ``find_latest_model``, ``list_trained_models``,
  ``load_model_spec``
* :mod:`lungseg.inference.segment`  ``Segmentation``, ``Segmenter`` (``Segmenter.from_models``)
* :mod:`lungseg.inference.settings` ``InferenceSettings`` (``InferenceSettings.from_params(params["inference"])``)
* :mod:`lungseg.inference.report`   ``severity_grade``, ``make_report``, ``write_outputs``
* :mod:`lungseg.inference.batch`    ``find_cases``, ``run_batch`` (folders of NIfTI, metadata.csv)
* :mod:`lungseg.inference.dicom`    ``read_series_folder``
* :mod:`lungseg.inference.dicom_write` ``write_dicom_series``
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "read_input": "readers",
    "LoadedModel": "models",
    "find_latest_model": "models",
    "list_trained_models": "models",
    "load_model_spec": "models",
    "Segmentation": "segment",
    "Segmenter": "segment",
    "InferenceSettings": "settings",
    "severity_grade": "report",
    "make_report": "report",
    "write_outputs": "report",
    "find_cases": "batch",
    "run_batch": "batch",
    "write_dicom_series": "dicom_write",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
