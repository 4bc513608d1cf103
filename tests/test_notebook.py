"""notebooks/eda.ipynb runs top to bottom (nbclient, the Kedro IPython extension) on a tiny dataset.

The dataset is the hand-made one of ``tiny_dataset``; the ``preprocessing`` pipeline writes what the notebook
reads into a copy of the project in tmp_path, and the notebook's ``%reload_kedro`` line is pointed at that copy
and its ``test`` environment. Any cell error fails the test with the cell's traceback.
"""

from __future__ import annotations

import json
import re
import sys

import nbclient
import nbformat
import pytest
from conftest import PROJECT_ROOT, make_kedro_project, run_kedro

NOTEBOOK = PROJECT_ROOT / "notebooks" / "eda.ipynb"
RELOAD = re.compile(r"^%reload_kedro\b.*$", re.MULTILINE)


def outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif "data" in out:
            parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.timeout(300)
def test_eda_notebook_runs_on_the_synthetic_data(tmp_path, tiny_dataset, monkeypatch):
    project = make_kedro_project(tmp_path, tiny_dataset)
    run_kedro(project, "preprocessing")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    reload_cells = [c for c in nb.cells if c.cell_type == "code" and RELOAD.search(c.source)]
    assert len(reload_cells) == 1, "the notebook should load its Kedro project with one %reload_kedro line"
    reload_cells[0].source = RELOAD.sub(f"%reload_kedro {project} --env=test", reload_cells[0].source)

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend: figures become outputs
    # a kernel on this interpreter, whatever "python3" kernel the user has installed (JUPYTER_PATH comes first)
    spec = tmp_path / "jupyter" / "kernels" / "lungseg-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lungseg test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="lungseg-test",
                                     resources={"metadata": {"path": str(project)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any cell error

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(out["output_type"] != "error" for c in code for out in c.get("outputs", []))
    text = "\n".join(outputs_text(c) for c in code)
    for case in ("case_a", "case_b", "case_c"):  # the case table and the split list the three cases
        assert text.count(case) >= 2, text
    assert re.search(r"infection: \d+\.\d\d% of the segmented area", text), text
    figures = sum("image/png" in out.get("data", {}) for c in code for out in c.get("outputs", []))
    assert figures >= 3, f"expected the overview, example-slice and model-input figures, got {figures}"
