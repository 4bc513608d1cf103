"""``FoldModelsDataset``: the models of a cross-validation, each with its config, in one folder.

Saved as ``<path>/fold_0.keras`` + ``<path>/fold_0.json``, ``fold_1``... The whole folder is
written next to its target and swapped in only when every fold is written, so a folder never mixes
the folds of two runs (a 5-fold run followed by a 2-fold run leaves exactly 2 folds) and an
interrupted save leaves the previous folder as it was. ``lungseg predict --models <path>`` reads the
same layout as a fold ensemble.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError, get_filepath_str, get_protocol_and_path

from lungseg.errors import DataValidationError
from lungseg.layout import output_tempdir


class FoldModelsDataset(AbstractDataset[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]):
    """Save / load ``{fold_name: {"model": keras.Model, "config": dict}}``.

    Args:
        path: the folder (local).
        compile: load the models compiled (needs lungseg's losses registered); evaluation and
            inference only predict, so the default is False.
    """

    def __init__(self, path: str, compile: bool = False, metadata: dict[str, Any] | None = None) -> None:  # noqa: A002
        protocol, local = get_protocol_and_path(path)
        if protocol != "file":
            raise DatasetError(f"FoldModelsDataset handles local folders only, got {path!r}")
        self._protocol, self._path, self._compile, self.metadata = protocol, PurePosixPath(local), compile, metadata

    @property
    def path(self) -> Path:
        return Path(get_filepath_str(self._path, self._protocol))

    def load(self) -> dict[str, dict[str, Any]]:
        from lungseg.models import load_model

        folder = self.path
        models = sorted(folder.glob("*.keras")) if folder.is_dir() else []
        if not models:
            raise DataValidationError("no fold models (*.keras) found; run a cross-validation pipeline", file=folder)
        out = {}
        for model_path in models:
            config_path = model_path.with_suffix(".json")
            if not config_path.is_file():
                raise DataValidationError(f"model {model_path.name} has no config {config_path.name}", file=folder)
            out[model_path.stem] = {"model": load_model(model_path, compile=self._compile),
                                    "config": json.loads(config_path.read_text())}
        return out

    def save(self, data: dict[str, dict[str, Any]]) -> None:
        if not isinstance(data, dict) or not data or not all({"model", "config"} <= set(v) for v in data.values()):
            raise DatasetError("FoldModelsDataset.save expects {fold: {'model': ..., 'config': ...}}")
        target = self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = output_tempdir(f".{target.name}.", target.parent)
        old = target.with_name(f".{target.name}.old")
        try:
            for name, item in data.items():
                (tmp / f"{name}.json").write_text(json.dumps(item["config"], indent=2, default=str))
                item["model"].save(tmp / f"{name}.keras")
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    def _exists(self) -> bool:
        return self.path.is_dir() and any(self.path.glob("*.keras"))

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "compile": self._compile}
