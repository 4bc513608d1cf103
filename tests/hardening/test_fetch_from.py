"""#28 item 8 (row 13): `lungseg fetch-data --from` is as strict as the download: archive size and ratio
limits, every NIfTI's header opened before anything is installed, symlink entries refused, members that
are not the dataset skipped and named, a full disk said as such, and --from always checks what it gets."""

from __future__ import annotations

import errno
import logging
import stat
import time
import zipfile

import pytest
from test_fetch import _nothing_left, kaggle_zip

from lungseg.cli import main
from lungseg.errors import DataValidationError, InputError
from lungseg.fetch import fetch_data, unpack


def _kaggle_with(tmp_path, extra: dict[str, bytes], name="archive.zip", symlink: str | None = None):
    """Kaggle's zip (two synthetic cases) with ``extra`` members added (and a symlink entry)."""
    archive = tmp_path / name
    archive.write_bytes(kaggle_zip(tmp_path))
    with zipfile.ZipFile(archive, "a", zipfile.ZIP_DEFLATED) as zf:
        for member, data in extra.items():
            zf.writestr(member, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return archive


def _cli(capsys, *args) -> tuple[int, str, float]:
    start = time.perf_counter()
    code = main(["fetch-data", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().err, time.perf_counter() - start


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path, capsys):
    archive = _kaggle_with(tmp_path, {"ct_scans/zeros.nii": b"\0" * (64 << 20)})  # 64 MB in about 64 KB
    code, err, seconds = _cli(capsys, "--dest", tmp_path / "raw", "--from", archive)
    assert code == 2 and seconds < 3, err
    assert "archive.zip" in err and "over the limit of 100:1" in err and "nothing was unpacked" in err
    _nothing_left(tmp_path / "raw")


def test_a_text_file_named_nii_gz_is_refused_by_name(tmp_path, capsys):
    archive = _kaggle_with(tmp_path, {"ct_scans/fake_org_009.nii.gz": b"this is not a volume\n" * 10})
    code, err, _ = _cli(capsys, "--dest", tmp_path / "raw", "--from", archive)
    assert code == 2 and "'ct_scans/fake_org_009.nii.gz' is not a readable NIfTI image" in err, err
    _nothing_left(tmp_path / "raw")


def test_a_symlink_entry_is_refused(tmp_path):
    archive = _kaggle_with(tmp_path, {}, symlink="ct_scans/link.nii")
    with pytest.raises(DataValidationError, match=r"symlink entries 'ct_scans/link.nii'"):
        fetch_data(tmp_path / "raw", archive, progress=False)
    _nothing_left(tmp_path / "raw")


def test_members_that_are_not_the_dataset_are_skipped_and_named(tmp_path, caplog):
    archive = _kaggle_with(tmp_path, {"notes/readme.txt": b"hi", "ct_scans/thumbs.db": b"x", "run.sh": b"rm -rf /"})
    caplog.set_level(logging.WARNING, logger="lungseg")
    result = fetch_data(tmp_path / "raw", archive, progress=False)
    assert result.action == "installed" and result.n_cases == 2
    (note,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "skipped 3 member(s)" in note and all(n in note for n in ("notes/readme.txt", "ct_scans/thumbs.db", "run.sh"))
    assert not (tmp_path / "raw" / "run.sh").exists() and not (tmp_path / "raw" / "notes").exists()


def test_a_full_disk_is_its_own_message_and_leaves_nothing(tmp_path, monkeypatch):
    archive = _kaggle_with(tmp_path, {})

    class Full:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(unpack, "open", Full, raising=False)
    with pytest.raises(InputError, match=r"the disk is full: unpacking archive.zip .*No space left on device"):
        fetch_data(tmp_path / "raw", archive, progress=False)
    _nothing_left(tmp_path / "raw")


def test_from_always_checks_what_it_is_given(tmp_path, capsys):
    good = _kaggle_with(tmp_path, {})
    dest = tmp_path / "raw"
    assert fetch_data(dest, good, progress=False).action == "installed"
    before = {p.relative_to(dest): p.stat().st_mtime_ns for p in dest.rglob("*")}
    assert fetch_data(dest, good, progress=False).action == "verified"  # the same archive: nothing to do
    cut = tmp_path / "truncated.zip"
    cut.write_bytes(good.read_bytes()[:-300])
    code, err, _ = _cli(capsys, "--dest", dest, "--from", cut)
    assert code == 2 and "truncated.zip" in err and "not a complete zip archive" in err, err
    assert {p.relative_to(dest): p.stat().st_mtime_ns for p in dest.rglob("*")} == before  # the install untouched
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".raw")]  # no staging folder left
