"""``lungseg fetch-data`` without the network, and the missing-data message of ``kedro run``.

A local HTTP server on 127.0.0.1 serves small synthetic archives with Zenodo's names and inner
layout; the tests pass their own SHA-256 values.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_kedro_project, phantom, run_kedro, write_nifti
from kedro_datasets.partitions import PartitionedDataset

from lungseg.cli import main
from lungseg.errors import DataValidationError, InputError
from lungseg.fetch import fetch_data, sources, unpack
from lungseg.pipelines.ingestion.nodes import ingest_cases

CASES = {  # case id -> (Zenodo CT name, mask name, phantom seed, intensity kind)
    "coronacases_001": ("coronacases_org_001.nii.gz", "coronacases_001.nii.gz", 1, "hu"),
    "radiopaedia_4_85506_1": ("radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz",
                              "radiopaedia_4_85506_1.nii.gz", 2, "uint8"),
}
SHAPE = (6, 32, 32)
CT_ZIP, LUNG_ZIP, INF_ZIP, BOTH_ZIP = (a.name for a in sources.ZENODO_ARCHIVES)


def _volumes(seed: int, kind: str) -> dict[str, np.ndarray]:
    ct, lung, inf = phantom(SHAPE, kind, seed)
    both = lung.copy()
    both[inf > 0] = 3
    return {CT_ZIP: ct, LUNG_ZIP: lung, INF_ZIP: inf, BOTH_ZIP: both}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zenodo_archives(tmp: Path, drop: tuple[str, str] | None = None) -> dict[str, bytes]:
    """The four archives' bytes; ``drop=(archive, case)`` leaves one case out of one archive."""
    members: dict[str, dict[str, bytes]] = {a: {} for a in (CT_ZIP, LUNG_ZIP, INF_ZIP, BOTH_ZIP)}
    for case, (ct_name, mask_name, seed, kind) in CASES.items():
        for archive, arr in _volumes(seed, kind).items():
            if drop == (archive, case):
                continue
            name = ct_name if archive == CT_ZIP else mask_name
            if archive == BOTH_ZIP:
                name = f"Lung_and_Infection_Mask/{name}"  # a folder inside an archive is flattened
            members[archive][name] = write_nifti(tmp / archive / name, arr).read_bytes()
    return {archive: _zip(m) for archive, m in members.items()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_archives(folder: Path, archives: dict[str, bytes]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in archives.items():
        (folder / name).write_bytes(data)
    return {name: _sha(data) for name, data in archives.items()}


def kaggle_zip(tmp: Path) -> bytes:
    """Kaggle's layout: metadata.csv with ../input/covid19-ct-scans/ paths, .nii files, four folders."""
    members, rows = {}, []
    layout = {a.name: (a.folder, a.column) for a in sources.ZENODO_ARCHIVES}
    for ct_name, mask_name, seed, kind in CASES.values():
        row = {}
        for archive, arr in _volumes(seed, kind).items():
            name = (ct_name if archive == CT_ZIP else mask_name).replace(".nii.gz", ".nii")
            folder, column = layout[archive]
            rel = f"{folder}/{name}"
            members[rel] = write_nifti(tmp / "kaggle" / rel, arr).read_bytes()
            row[column] = f"../input/covid19-ct-scans/{rel}"
        rows.append(row)
    members["metadata.csv"] = pd.DataFrame(rows).to_csv(index=False).encode()
    return _zip(members)


def _ingest(root: Path):
    meta = pd.read_csv(root / "metadata.csv")
    volumes = PartitionedDataset(path=str(root), dataset="lungseg.datasets.NiftiDataset").load()
    return ingest_cases(meta, volumes, {"skip_invalid_cases": False})


def _assert_ingests(root: Path) -> None:
    table, canonical, skipped = _ingest(root)
    assert sorted(table["case_id"]) == sorted(CASES) and skipped.empty
    for case, (_, _, seed, kind) in CASES.items():
        ct, lung, inf = phantom(SHAPE, kind, seed)
        record = canonical[case]()
        assert np.array_equal(record["ct"], ct) and np.array_equal(record["lung"], lung)
        assert np.array_equal(record["infection"], inf)


def _nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.partial-*")), "a staging folder was left behind"


# ----------------------------------------------------------------------------- a local Zenodo
class FakeZenodo:
    """Serves ``files`` at ``base_url``; counts requests; ``truncate[name] = n`` cuts the next n bodies."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: Counter[str] = Counter()
        self.truncate: Counter[str] = Counter()
        zenodo = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                name = self.path.rsplit("/", 1)[-1]
                zenodo.requests[name] += 1
                body = zenodo.files.get(name)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if zenodo.truncate[name] > 0:
                    zenodo.truncate[name] -= 1
                    body = body[: len(body) // 2]  # the connection closes early: an interrupted download
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/records/3757476/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def zenodo(tmp_path, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = FakeZenodo(zenodo_archives(tmp_path / "src"))
    yield server
    server.stop()


def _fetch(server: FakeZenodo, dest: Path, **kwargs):
    hashes = kwargs.pop("hashes", {n: _sha(b) for n, b in server.files.items()})
    return fetch_data(dest, base_url=server.base_url, hashes=hashes, cache_dir=dest.parent / "cache", retries=0,
                      progress=False, timeout=20, **kwargs)


# ----------------------------------------------------------------------------- download
def test_download_checksummed_layout_metadata_and_ingestion(zenodo, tmp_path):
    dest = tmp_path / "data" / "covid19-ct-scans"
    result = _fetch(zenodo, dest)
    assert (result.action, result.source, result.n_cases) == ("installed", "zenodo", 2)
    meta = pd.read_csv(dest / "metadata.csv")
    assert list(meta.columns) == ["ct_scan", "lung_mask", "infection_mask", "lung_and_infection_mask"]
    assert list(meta.iloc[1]) == [
        "ct_scans/radiopaedia_org_covid-19-pneumonia-4_85506_1-dcm.nii.gz", "lung_mask/radiopaedia_4_85506_1.nii.gz",
        "infection_mask/radiopaedia_4_85506_1.nii.gz", "lung_and_infection_mask/radiopaedia_4_85506_1.nii.gz"]
    licence = (dest / "LICENSE_AND_CITATION.md").read_text()
    assert "CC BY 4.0" in licence and "10.5281/zenodo.3757476" in licence and "10.1002/mp.14676" in licence
    _assert_ingests(dest)
    assert not list(dest.parent.glob(".covid19-ct-scans.partial-*"))
    assert sorted(zenodo.requests.values()) == [1, 1, 1, 1]

    again = _fetch(zenodo, dest)  # idempotent: verifies, downloads nothing, changes nothing
    assert again.action == "verified" and again.n_files == result.n_files
    assert sum(zenodo.requests.values()) == 4

    (dest / "lung_mask" / "coronacases_001.nii.gz").unlink()  # damaged: unpacked again from the cache
    assert _fetch(zenodo, dest).action == "installed"
    assert (dest / "lung_mask" / "coronacases_001.nii.gz").is_file() and sum(zenodo.requests.values()) == 4


def test_corrupted_download_is_refused_and_nothing_unpacked(zenodo, tmp_path):
    hashes = {n: _sha(b) for n, b in zenodo.files.items()}
    good = zenodo.files[LUNG_ZIP]
    zenodo.files[LUNG_ZIP] = good[:100] + bytes([good[100] ^ 0xFF]) + good[101:]
    dest = tmp_path / "raw"
    with pytest.raises(DataValidationError, match="SHA-256") as err:
        _fetch(zenodo, dest, hashes=hashes)
    assert err.value.file == LUNG_ZIP and hashes[LUNG_ZIP] in str(err.value)
    _nothing_left(dest)
    assert not (tmp_path / "cache" / LUNG_ZIP).exists()


def test_interrupted_download_resumes_without_fetching_twice(zenodo, tmp_path):
    dest = tmp_path / "raw"
    zenodo.truncate[INF_ZIP] = 1
    with pytest.raises(DataValidationError, match="download from .* failed") as err:
        _fetch(zenodo, dest)
    assert err.value.file == INF_ZIP
    _nothing_left(dest)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted([CT_ZIP, LUNG_ZIP])
    assert _fetch(zenodo, dest).action == "installed"
    assert zenodo.requests == Counter({CT_ZIP: 1, LUNG_ZIP: 1, INF_ZIP: 2, BOTH_ZIP: 1})
    _assert_ingests(dest)


def test_cli_downloads_from_a_mirror(zenodo, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sources, "ZENODO_SHA256", {n: _sha(b) for n, b in zenodo.files.items()})
    dest, cache = tmp_path / "raw", tmp_path / "cache"
    argv = ["fetch-data", "--mirror", zenodo.base_url, "--dest", str(dest), "--cache", str(cache), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cases unpacked" in out and f"archives stay in {cache}" in out and "Creative Commons" in out
    assert sorted(p.name for p in cache.iterdir()) == sorted(zenodo.files)
    _assert_ingests(dest)


# ----------------------------------------------------------------------------- --from
def test_from_zenodo_archives_through_the_cli(tmp_path, monkeypatch, capsys):
    hashes = _write_archives(tmp_path / "downloads", zenodo_archives(tmp_path / "src"))
    dest = tmp_path / "raw"
    argv = ["fetch-data", "--from", str(tmp_path / "downloads"), "--dest", str(dest), "--no-progress"]
    assert main(argv) == 2  # synthetic archives do not match the published SHA-256 values
    assert "SHA-256" in capsys.readouterr().err
    _nothing_left(dest)

    monkeypatch.setattr(sources, "ZENODO_SHA256", hashes)
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "2 cases unpacked" in out and "CC BY 4.0" in out and "10.5281/zenodo.3757476" in out
    _assert_ingests(dest)
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_from_kaggle_zip_keeps_its_metadata(tmp_path):
    (tmp_path / "archive.zip").write_bytes(kaggle_zip(tmp_path))
    dest = tmp_path / "raw"
    result = fetch_data(dest, tmp_path / "archive.zip", progress=False)
    assert (result.action, result.source, result.n_cases) == ("installed", "kaggle", 2)
    first_ct = pd.read_csv(dest / "metadata.csv")["ct_scan"][0]
    assert first_ct == "../input/covid19-ct-scans/ct_scans/coronacases_org_001.nii"
    assert (dest / "LICENSE_AND_CITATION.md").is_file()
    _assert_ingests(dest)


def test_truncated_archive_is_a_clear_error(tmp_path):
    data = kaggle_zip(tmp_path)
    (tmp_path / "archive.zip").write_bytes(data[: len(data) - 200])
    with pytest.raises(DataValidationError, match="not a complete zip archive"):
        fetch_data(tmp_path / "raw", tmp_path / "archive.zip", progress=False)
    _nothing_left(tmp_path / "raw")


def test_missing_case_is_a_clear_error(tmp_path):
    archives = zenodo_archives(tmp_path / "src", drop=(LUNG_ZIP, "radiopaedia_4_85506_1"))
    hashes = _write_archives(tmp_path / "downloads", archives)
    with pytest.raises(DataValidationError, match=r"Lung_Mask.zip has no file for case\(s\) radiopaedia_4_85506_1"):
        fetch_data(tmp_path / "raw", tmp_path / "downloads", hashes=hashes, progress=False)
    _nothing_left(tmp_path / "raw")


@pytest.mark.parametrize("member", ["../evil.nii", "/tmp/evil.nii", "ct_scans/../../evil.nii", "C:/evil.nii"])
def test_zip_slip_members_are_refused(tmp_path, member):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.csv", "ct_scan,lung_mask,infection_mask,lung_and_infection_mask\n")
        zf.writestr(member, b"not a volume")
    with pytest.raises(DataValidationError, match="unsafe member path"):
        fetch_data(tmp_path / "raw", archive, progress=False)
    _nothing_left(tmp_path / "raw")
    assert not (tmp_path / "evil.nii").exists()
    assert unpack.safe_member_path("ct_scans/./a.nii", "x.zip") == "ct_scans/a.nii"


def test_foreign_data_at_dest_is_never_replaced(tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "metadata.csv").write_text("mine")
    (tmp_path / "archive.zip").write_bytes(kaggle_zip(tmp_path))
    with pytest.raises(InputError, match="did not write"):
        fetch_data(dest, tmp_path / "archive.zip", progress=False)
    assert (dest / "metadata.csv").read_text() == "mine"

    _write_archives(tmp_path / "partial", {CT_ZIP: b"x", LUNG_ZIP: b"y"})
    missing = r"Zenodo archive\(s\) \['Infection_Mask.zip', 'Lung_and_Infection_Mask.zip'\]"
    with pytest.raises(InputError, match=missing):
        fetch_data(tmp_path / "other", tmp_path / "partial", progress=False)
    _nothing_left(tmp_path / "other")


# ----------------------------------------------------------------------------- kedro run without data
_SESSION_SCRIPT = """
import json, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project = Path(sys.argv[1])
bootstrap_project(project)
try:
    with KedroSession.create(project_path=project, env="test") as session:
        session.run(pipeline_name="infection_unet")
except Exception as exc:
    print(json.dumps({"type": type(exc).__name__, "message": str(exc)}))
    sys.exit(3)
"""


def _phrases_present(text: str) -> None:
    flat = " ".join(text.split())
    assert "lungseg fetch-data" in flat and "kedro run --env=demo --pipelines=infection_unet" in flat
    assert "metadata.csv does not exist" in flat


def test_kedro_run_without_data_prints_one_paragraph_then_works_after_fetch(tmp_path):
    raw = tmp_path / "raw"
    project = make_kedro_project(tmp_path, raw)
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

    proc = subprocess.run([sys.executable, "-c", _SESSION_SCRIPT, str(project)], cwd=project, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 3, proc.stderr[-3000:]
    error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert error["type"] == "MissingRawDataError"
    _phrases_present(error["message"])

    kedro = Path(sys.executable).parent / "kedro"
    proc = subprocess.run([str(kedro), "run", "--env=test", "--pipeline=infection_unet"], cwd=project,
                          capture_output=True, text=True, timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output and "DatasetError" not in output, output[-3000:]
    _phrases_present(output)
    assert not (project / "mlflow.db").exists() or "infection_unet" not in _mlflow_run_names(project)

    hashes = _write_archives(tmp_path / "downloads", zenodo_archives(tmp_path / "src"))
    assert fetch_data(raw, tmp_path / "downloads", hashes=hashes, progress=False).action == "installed"
    run_kedro(project, "ingestion")
    table = pd.read_csv(project / "data" / "02_intermediate" / "case_table.csv")
    assert sorted(table["case_id"]) == sorted(CASES)


def _mlflow_run_names(project: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(project / "mlflow.db") as con:
        try:
            return [r[0] for r in con.execute("select name from runs")]
        except sqlite3.OperationalError:
            return []


def test_raw_data_check_hook_covers_every_pipeline_that_reads_the_dataset(tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Node, Pipeline
    from kedro_datasets.pandas import CSVDataset

    from lungseg.hooks import MissingRawDataError, RawDataCheckHook

    raw = tmp_path / "raw"
    catalog = DataCatalog({"raw_metadata": CSVDataset(filepath=str(raw / "metadata.csv")),
                           "params:inference": MemoryDataset({"input": str(raw)})})

    def step(x):
        return x

    reads_raw = Pipeline([Node(step, "raw_metadata", "case_table", name="ingest")])
    inference = Pipeline([Node(step, "params:inference", "summary", name="infer")])
    other = Pipeline([Node(step, "case_table", "report", name="report")])
    hook = RawDataCheckHook()
    params = {"pipeline_names": ["ingestion"], "project_path": str(tmp_path)}
    for pipeline in (reads_raw, inference):
        with pytest.raises(MissingRawDataError, match="raw/metadata.csv does not exist") as err:
            hook.before_pipeline_run(params, pipeline, catalog)
        assert err.value.exit_code == 1 and "--dest raw" in str(err.value)
    hook.before_pipeline_run(params, other, catalog)  # does not need the raw data
    catalog["params:inference"] = MemoryDataset({"input": str(tmp_path / "elsewhere")})
    hook.before_pipeline_run(params, inference, catalog)  # another input: inference's own checks apply
    raw.mkdir()
    (raw / "metadata.csv").write_text("ct_scan\n")
    hook.before_pipeline_run(params, reads_raw, catalog)
