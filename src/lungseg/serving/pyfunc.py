"""``lungseg-combined``: the lung and infection models as one ``mlflow.pyfunc`` model.

Input (what a service sends): a table with one column ``ct_nifti_base64``, one CT per row, each the
bytes of a ``.nii`` or ``.nii.gz`` file in base64. A NIfTI file carries its voxel spacing and
orientation, so the masks come back on the same grid and the volumes in ml are right. Over HTTP::

    POST /invocations  {"dataframe_split": {"columns": ["ct_nifti_base64"], "data": [["H4sI..."]]}}

Output: one row per CT, columns ``label_map_nifti_base64`` (a gzipped NIfTI of uint8 labels 1 left
lung, 2 right lung, 3 infection, on the input's own grid and affine: ``lungseg predict``'s
``lung_and_infection_mask.nii.gz``) and ``report_json`` (``lungseg predict``'s report.json: volumes, the lesion table,
involvement % and severity per lung; ``provenance``: each model's training dataset, environment and
recorded score; ``severity_withheld`` when models trained on synthetic phantoms met another input).

Each CT is read by :func:`lungseg.inference.readers.read_input` and segmented by
:class:`lungseg.inference.segment.Segmenter`, the code of ``lungseg predict``, with the inference
settings stored in the model (batch size, lung clean-up, flip TTA, plausibility guard, limits, and
the prediction precision, which the loader may override:
``mlflow.pyfunc.load_model(uri, model_config={"precision": "mixed_bfloat16"})``).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc

INPUT_COLUMN = "ct_nifti_base64"
OUTPUT_COLUMNS = ("label_map_nifti_base64", "report_json")


def encode_nifti(path_or_bytes: str | Path | bytes) -> str:
    """A NIfTI file (path or bytes) as the model's input string."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    return base64.b64encode(data).decode("ascii")


def decode_label_map(text: str):
    """The ``label_map_nifti_base64`` of an answer as a nibabel image."""
    import nibabel as nib

    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(text)))


def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400 from `mlflow models serve`


class CombinedSegmentationModel(mlflow.pyfunc.PythonModel):
    """Loads the bundle artifact (:mod:`lungseg.serving.bundle`) once; segments each row's CT."""

    def load_context(self, context) -> None:
        from lungseg.serving.bundle import BUNDLE_ARTIFACT, load_bundle

        self._models = load_bundle(context.artifacts[BUNDLE_ARTIFACT], "lungseg-combined")
        self.precision = self._apply_precision(getattr(context, "model_config", None) or {})
        self._segmenter = self._models.segmenter()

    def _apply_precision(self, model_config: dict) -> str:
        """Set the models to compute in the precision the loader asked for
        (``mlflow.pyfunc.load_model(uri, model_config={"precision": "auto"})``), else in the bundle's
        ``precision`` setting (the ``inference.precision`` the model was registered with; float32 for a
        bundle written before the setting existed). Returns the policy in use."""
        from lungseg.models.precision import check_precision, loaded_in, resolve_and_log

        unknown = sorted(set(model_config) - {"precision"})
        if unknown:
            raise _bad_request(f"lungseg-combined: unknown model_config keys {unknown} (known: ['precision'])")
        name = model_config.get("precision", self._models.settings.get("precision", "float32"))
        policy = resolve_and_log(check_precision(name, "lungseg-combined model_config"), "Prediction")
        self._models.lung = loaded_in(self._models.lung, policy)
        self._models.infection = loaded_in(self._models.infection, policy)
        return policy

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import pandas as pd

        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if not isinstance(model_input, pd.DataFrame) or INPUT_COLUMN not in model_input:
            raise _bad_request(f"the input needs a column {INPUT_COLUMN!r} (a base64 .nii or .nii.gz file per row)")
        texts = list(model_input[INPUT_COLUMN])
        for i, text in enumerate(texts):  # every row's size before any row is decoded, written or segmented
            self._check_size(i, text)
        rows = [self._segment_one(i, text) for i, text in enumerate(texts)]
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))

    def _check_size(self, row: int, text: Any) -> None:
        """Refuse a row whose CT would decode to more than ``inference.limits.max_payload_mb``."""
        from lungseg.limits import as_limits

        limit_mb = as_limits(self._models.settings["limits"]).max_payload_mb
        size_mb = len(text) * 3 / 4 / 1e6 if isinstance(text, (str, bytes)) else 0.0  # base64: 4 chars, 3 bytes
        if size_mb > limit_mb:
            raise _bad_request(f"row {row}: the CT is {size_mb:,.0f} MB, over the limit of {limit_mb:g} MB a row "
                               "(inference.limits.max_payload_mb); refused before decoding")

    def _segment_one(self, row: int, text: Any) -> dict[str, str]:
        from lungseg.errors import LungsegError
        from lungseg.inference.export import lesion_table, tidy
        from lungseg.inference.ownership import scratch_dir
        from lungseg.inference.readers import read_input
        from lungseg.inference.report import make_report

        try:
            data = base64.b64decode(str(text), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _bad_request(f"row {row}: {INPUT_COLUMN} is not base64 ({exc})") from exc
        suffix = ".nii.gz" if data[:2] == b"\x1f\x8b" else ".nii"
        with scratch_dir("lungseg-serve-") as tmp:
            path = Path(tmp) / f"row_{row}{suffix}"
            path.write_bytes(data)
            try:
                volume, kind = read_input(path, self._models.settings["limits"])
                seg = self._segmenter.segment(volume, kind, tasks=self._tasks(), progress=False)
            except LungsegError as exc:  # the message names the row, never the server's temporary path
                text = str(exc).replace(str(path), path.name).replace(str(Path(tmp)), "<upload>")
                raise _bad_request(f"row {row}: {text}") from exc
        report = make_report(seg, volume.spacing)
        if self._models.infection is not None:  # lungseg predict's lesion table (lesions.csv), as in its report.json
            report["lesions"] = lesion_table(volume, seg, volumes_in_ml=report.get("lung_volume_ml") is not None)
        report["models"] = {
            "lung": self._models.lung.source,
            "infection": self._models.infection.source if self._models.infection else None,
        }
        report["precision"] = self.precision
        labels = volume.to_nifti(seg.combined().astype("uint8"), "uint8")  # as lungseg predict writes it
        return {
            "label_map_nifti_base64": base64.b64encode(gzip.compress(labels.to_bytes(), mtime=0)).decode("ascii"),
            "report_json": json.dumps(tidy(report), default=_jsonable),
        }

    def _tasks(self) -> tuple[str, ...]:
        return ("lung", "infection") if self._models.infection is not None else ("lung",)


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, and paths, in a report."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
