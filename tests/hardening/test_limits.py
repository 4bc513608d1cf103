"""Resource limits before work: header bombs, zip bombs and huge DICOM dimensions are refused within a
second or so, with one clear line (exit 2), before any array is allocated or any member extracted."""

from __future__ import annotations

import gzip
import tempfile
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hardening_helpers import (
    FAST,
    PROJECT_ROOT,
    error_lines,
    leftovers,
    phantom,
    predict,
    rule_models_fixture,  # noqa: F401 - the fixture
)

from lungseg.errors import InputError
from lungseg.inference.dicom_write import write_dicom_series
from lungseg.inference.readers import read_input
from lungseg.limits import Limits, check_zip, load_limits


def header_bomb(path: Path, shape=(1500, 1500, 1500)) -> Path:
    """A .nii.gz of a few dozen bytes whose header claims ``shape`` int16 voxels (no data follows)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4, compresslevel=9))
    return path


def zip_bomb(path: Path, mib: int = 1024) -> Path:
    """A zip of about 1 MB whose one member expands to ``mib`` MiB of zeros (named like a DICOM slice)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("series/IM00001.dcm", "w", force_zip64=True) as fh:
            chunk = bytes(16 << 20)
            for _ in range(mib // 16):
                fh.write(chunk)
    return path


@pytest.fixture(scope="module")
def bomb_zip(tmp_path_factory) -> Path:
    return zip_bomb(tmp_path_factory.mktemp("bomb") / "scan.zip")


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The system temporary folder of this test (where extraction folders would be left)."""
    tmp = tmp_path / "systmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def _conf_with(tmp_path: Path, monkeypatch, **limits) -> None:
    """$LUNGSEG_CONF_DIR pointing at a copy of the inference parameters with some limits changed."""
    params = yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_inference.yml").read_text())
    params["inference"]["limits"].update(limits)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "parameters_inference.yml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("LUNGSEG_CONF_DIR", str(conf))


def _refused(tmp_path, capsys, src, models, *words, limit=FAST):
    out = tmp_path / "out"
    code, seconds = predict(src, out, models)
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < limit, f"took {seconds:.1f} s"
    assert "internal error" not in err and "Traceback" not in err
    (line,) = error_lines(err)
    for word in words:
        assert word in line, line
    assert not out.exists() and leftovers(tmp_path) == []
    return line


def test_header_bomb_is_refused_before_any_allocation(tmp_path, rule_models, capsys):
    src = header_bomb(tmp_path / "bomb.nii.gz")
    assert src.stat().st_size < 100
    _refused(
        tmp_path, capsys, src, rule_models, "bomb.nii.gz", "1500x1500x1500", "max_voxels", "refused before reading"
    )


def test_header_within_the_voxel_limit_but_beyond_what_the_file_can_hold(tmp_path, rule_models, capsys):
    src = header_bomb(tmp_path / "liar.nii.gz", shape=(800, 800, 800))  # 1 GB promised by ~70 bytes
    _refused(tmp_path, capsys, src, rule_models, "liar.nii.gz", "promises 1,024,000,000 bytes", "1032:1")
    raw = tmp_path / "short.nii"
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((64, 64, 40))
    hdr.set_data_dtype(np.int16)
    hdr["vox_offset"] = 352
    raw.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 1000)
    (tmp_path / "liar.nii.gz").unlink()
    _refused(tmp_path, capsys, raw, rule_models, "short.nii", "truncated")


def test_zip_bomb_is_refused_before_extracting(tmp_path, rule_models, capsys, bomb_zip, private_tmp):
    start = time.perf_counter()
    line = _refused(
        tmp_path,
        capsys,
        bomb_zip,
        rule_models,
        "scan.zip",
        "compression ratio",
        "max_zip_ratio",
        "nothing was extracted",
    )
    assert time.perf_counter() - start < FAST, line
    assert list(private_tmp.iterdir()) == []  # no extraction folder


def test_zip_total_size_and_member_count_caps(tmp_path, rule_models, capsys, monkeypatch, private_tmp):
    small = zip_bomb(tmp_path / "big.zip", mib=64)
    _conf_with(tmp_path, monkeypatch, max_zip_mb=50)
    _refused(tmp_path, capsys, small, rule_models, "big.zip", "expands to 67 MB", "limit of 50 MB", "max_zip_mb")
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(12):
            zf.writestr(f"IM{i:05d}.dcm", b"x")
    limits = Limits.from_params(
        {
            **yaml.safe_load((PROJECT_ROOT / "conf" / "base" / "parameters_inference.yml").read_text())["inference"][
                "limits"
            ],
            "max_zip_members": 10,
        }
    )
    with zipfile.ZipFile(many) as zf, pytest.raises(InputError, match=r"holds 12 files, over the limit of 10"):
        check_zip(zf, "file 'many.zip'", limits)
    assert list(private_tmp.iterdir()) == []


def test_a_real_zipped_series_passes_the_zip_checks(tmp_path):
    ct = phantom(seed=1)[0]
    write_dicom_series(ct, (2.5, 0.8, 0.8), tmp_path / "series")
    with zipfile.ZipFile(tmp_path / "series.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((tmp_path / "series").iterdir()):
            zf.write(f, f"series/{f.name}")
    volume, kind = read_input(tmp_path / "series.zip", load_limits())
    np.testing.assert_array_equal(volume.array, ct)


def _huge_dicom(path: Path, rows: int, cols: int) -> Path:
    write_dicom_series(phantom(shape=(1, 40, 40), seed=2)[0], (2.5, 0.8, 0.8), path.parent / "one", shuffle_names=False)
    import pydicom

    (src,) = (path.parent / "one").iterdir()
    ds = pydicom.dcmread(src)
    ds.Rows, ds.Columns = rows, cols  # the pixel data stays 40x40: the header lies
    ds.save_as(path)
    return path


def test_huge_dicom_dimensions_are_refused_from_the_tags(tmp_path, rule_models, capsys):
    src = _huge_dicom(tmp_path / "huge.dcm", 60000, 60000)
    _refused(
        tmp_path, capsys, src, rule_models, "huge.dcm", "60,000x60,000", "max_inplane", "before reading the pixels"
    )


def test_dicom_frames_times_pixels_limit(tmp_path):
    src = _huge_dicom(tmp_path / "frames.dcm", 4000, 4000)
    limits = load_limits()
    assert 4000 <= limits.max_inplane and 4000 * 4000 * 5 > limits.max_dicom_pixels
    import pydicom

    ds = pydicom.dcmread(src)
    ds.NumberOfFrames = 5
    ds.save_as(src)
    with pytest.raises(InputError, match=r"Rows x Columns x frames = 80,000,000 pixels, over the limit"):
        read_input(src, load_limits())


def test_non_dicom_members_are_not_parsed(tmp_path, monkeypatch):
    """The cheap preamble test skips junk before pydicom sees it (the issue's 286 s of dcmread(force=True))."""
    import pydicom

    folder = tmp_path / "study"
    write_dicom_series(phantom(seed=3)[0], (2.5, 0.8, 0.8), folder)
    for i in range(50):
        (folder / f"junk{i}.bin").write_bytes(np.random.default_rng(i).bytes(2000))
    seen = []
    real = pydicom.dcmread

    def counting(f, *args, **kwargs):
        seen.append(Path(f).name)
        return real(f, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    volume, _ = read_input(folder, load_limits())
    assert volume.array.shape == (12, 64, 64)
    assert not [n for n in seen if n.startswith("junk")]


def test_png_header_claiming_a_giant_image(tmp_path, rule_models, capsys):
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 5000, 5000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (tmp_path / "giant.png").write_bytes(png + b"\0" * 64)
    _refused(tmp_path, capsys, tmp_path / "giant.png", rule_models, "giant.png", "5,000 pixels across", "max_inplane")
