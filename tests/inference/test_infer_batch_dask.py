"""``lungseg predict metadata.csv -o OUT --dask ADDRESS`` (#27 item 2): one Dask task per case.

A LocalCluster of two one-thread workers in this process (``processes=False``), closed by the fixture.
The serial batch is the reference: the same rows, the same files; a broken case is an error row and the
others go on; the models are built once per worker process, not once per case; the driver alone writes
the manifest and summary.csv; an unreachable scheduler is one error naming the address, nothing written.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from test_browser_tracking import free_port
from test_infer_batch_eval import models_dir, predict, write_dataset  # noqa: F401 (models_dir: a fixture)

pytest.importorskip("distributed")

CASES = {"case_a": {"seed": 1}, "case_b": {"seed": 2, "permuted": True}, "case_c": {"seed": 3}}
NUMBERS = ["lung_ml_total", "infection_ml_total", "lung_dice", "infection_dice", "n_lesions"]


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    csv = write_dataset(root, CASES)
    meta = pd.read_csv(csv)  # a fourth case whose CT is not a NIfTI file: it fails, the others go on
    broken = root / "ct_scans" / "case_broken_org.nii.gz"
    broken.write_bytes(b"not a nifti file")
    meta.loc[len(meta)] = {"ct_scan": "../input/covid19-ct-scans/ct_scans/case_broken_org.nii.gz",
                           "lung_mask": None, "infection_mask": None}
    meta.to_csv(csv, index=False)
    return csv


def test_dask_batch_matches_the_serial_batch_and_isolates_a_failed_case(tmp_path, models_dir, dataset, cluster,  # noqa: F811
                                                                         capsys):
    from lungseg.inference import batch_dask

    serial, dask = tmp_path / "serial", tmp_path / "dask"
    assert predict(dataset, serial, models_dir) == 2  # exit 2: one case failed
    loads = batch_dask.loads
    assert predict(dataset, dask, models_dir, "--dask", cluster.scheduler_address) == 2
    out = capsys.readouterr()
    assert "batch on the Dask cluster" in out.out and "1 of 4 cases failed (case_broken)" in out.err
    assert batch_dask.loads - loads == 1  # one worker process (two thread workers): one Segmenter, not 4

    a, b = (pd.read_csv(d / "summary.csv").set_index("case") for d in (serial, dask))
    assert list(b.index) == ["case_a", "case_b", "case_c", "case_broken"]  # the cases' order, not completion's
    assert (a["status"] == b["status"]).all() and b.loc["case_broken", "status"] == "error"
    assert "case_broken_org.nii.gz" in b.loc["case_broken", "error"]
    pd.testing.assert_frame_equal(a[NUMBERS], b[NUMBERS])
    for case in CASES:
        files = sorted(p.name for p in (dask / case).iterdir())
        assert files == sorted(p.name for p in (serial / case).iterdir()) and "lung_mask.nii.gz" in files
        assert not list((dask / case).glob(".*tmp*"))  # atomic writes: no temporary file left
    manifest = json.loads((dask / ".lungseg-output.json").read_text())
    assert set(CASES) | {"summary.csv"} <= set(manifest["entries"]) and "case_broken" not in manifest["entries"]
    assert not (dask / "case_broken").exists()


def test_a_case_whose_task_is_lost_is_an_error_row_naming_it(tmp_path, models_dir, dataset, cluster,  # noqa: F811
                                                              monkeypatch):
    """Models that do not load on a worker fail that worker's cases; a task that dies outside
    segment_case (as one whose worker is killed does: KilledWorker) fails its own case only."""
    from distributed import Client

    from lungseg.inference import batch_dask
    from lungseg.inference.batch import find_cases
    from lungseg.limits import load_limits

    cases = [c for c in find_cases(dataset) if c.case != "case_broken"]
    with Client(cluster) as client:
        summary = batch_dask.run_batch_dask(client, _segmenter_that_fails, cases, tmp_path / "a", progress=False,
                                            limits=load_limits())
        assert list(summary["case"]) == ["case_a", "case_b", "case_c"] and (summary["status"] == "error").all()
        assert summary["error"].str.contains("models could not be loaded on the Dask worker: OSError: no GPU").all()

        real = batch_dask._case_task

        def lost(token, make, item, *args):  # the cluster runs in this process: the patched function runs
            if item.case == "case_b":
                raise RuntimeError("worker tcp://127.0.0.1:1 lost")
            return real(token, make, item, *args)

        monkeypatch.setattr(batch_dask, "_case_task", lost)
        summary = batch_dask.run_batch_dask(client, _working_segmenter(models_dir), cases, tmp_path / "b",
                                            progress=False, limits=load_limits()).set_index("case")
        assert list(summary["status"]) == ["ok", "error", "ok"]
        assert "Dask task failed: RuntimeError: worker tcp://127.0.0.1:1 lost; rerun" in summary.loc["case_b", "error"]
        assert not (tmp_path / "b" / "case_b").exists() and (tmp_path / "b" / "case_c" / "report.json").is_file()
        # the rerun into the same -o (the worker is back) completes the lost case, without --overwrite
        monkeypatch.setattr(batch_dask, "_case_task", real)
        rerun = batch_dask.run_batch_dask(client, _working_segmenter(models_dir), cases, tmp_path / "b",
                                          progress=False, limits=load_limits()).set_index("case")
    assert list(rerun["status"]) == ["ok", "ok", "ok"] and (tmp_path / "b" / "case_b" / "report.json").is_file()


def _segmenter_that_fails():
    raise OSError("no GPU")


def _working_segmenter(root):
    import functools

    from lungseg.inference.models import load_model_spec
    from lungseg.inference.segment import Segmenter
    from lungseg.inference.settings import InferenceSettings
    from lungseg.limits import load_guard

    def make(root):
        lung, infection = (load_model_spec(None, task, root) for task in ("lung", "infection"))
        return Segmenter.from_models(lung, infection, InferenceSettings(guard=load_guard()))

    return functools.partial(make, root)


def test_unreachable_scheduler_is_one_error_and_nothing_is_written(tmp_path, models_dir, dataset, capsys):  # noqa: F811
    address = f"tcp://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    start = time.monotonic()
    assert predict(dataset, out, models_dir, "--dask", address) == 2
    assert time.monotonic() - start < 10  # a refused port is known at once; a silent host takes the 10 s
    assert f"Dask scheduler '{address}' did not answer" in capsys.readouterr().err
    assert not out.exists()
