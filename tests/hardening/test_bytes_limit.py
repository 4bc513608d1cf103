"""#28 item 4, row 6: the memory limit counts decompressed bytes of the declared dtype, not voxels.
A small .nii.gz whose header declares float64 data within max_voxels but over max_voxels x 2 bytes is
refused from its header, in a fresh process, fast and without allocating the volume."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hardening_helpers import VMEM_MB, error_lines, phantom, run_bounded, save_nifti

from lungseg.errors import InputError
from lungseg.inference.readers import read_input
from lungseg.limits import VOXEL_BYTES, load_limits


def _declare(src, dst, dims, datatype: int, bitpix: int):
    """Copy a NIfTI-1 .nii.gz with its header's dim, datatype and bitpix overwritten (the data stays small)."""
    raw = bytearray(gzip.decompress(src.read_bytes()))
    raw[40:56] = struct.pack("<8h", len(dims), *dims, *([1] * (7 - len(dims))))
    raw[70:74] = struct.pack("<hh", datatype, bitpix)
    dst.write_bytes(gzip.compress(bytes(raw)))
    return dst


def test_a_float64_header_over_the_byte_limit_is_refused_before_reading(tmp_path):
    src = tmp_path / "small.nii.gz"
    save_nifti(src, phantom(seed=1)[0])
    limits = load_limits()
    dims = (512, 512, 1600)  # 419 M voxels: within max_voxels, but 3.4 GB as float64
    assert np.prod(dims) <= limits.max_voxels < np.prod(dims) * 8 / VOXEL_BYTES
    bomb = _declare(src, tmp_path / "bomb.nii.gz", dims, datatype=64, bitpix=64)
    with pytest.raises(InputError, match=r"bomb\.nii\.gz.*of 8 bytes = 3\.36 GB of data, over the limit of 1\.20 GB"):
        read_input(bomb, limits)
    same_as_int16 = _declare(src, tmp_path / "int16.nii.gz", dims, datatype=4, bitpix=16)
    with pytest.raises(InputError) as int16:  # within both limits: refused later, by the payload check
        read_input(same_as_int16, limits)
    assert "GB of data" not in str(int16.value)


def test_the_cli_refuses_it_in_a_fresh_process_quickly_and_small(tmp_path):
    """Row 6's bound: refused within 2 CPU seconds of the command's work and under 500 MB resident, in a
    process under ``ulimit -v`` of 1 GB (its address space maps about 620 MB of libraries: cv2, scipy), where
    reading the 3.4 GB the header declares could not even start."""
    src = tmp_path / "small.nii.gz"
    save_nifti(src, phantom(seed=1)[0])
    bomb = _declare(src, tmp_path / "bomb.nii.gz", (512, 512, 1600), datatype=64, bitpix=64)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err, seconds, peak_mb = run_bounded(["predict", bomb, "-o", tmp_path / "out"], vmem_mb=VMEM_MB)
    assert code == 2, err
    (line,) = error_lines(err)
    assert "bomb.nii.gz" in line and "GB of data" in line and "max_voxels" in line
    assert seconds < 2 and peak_mb < 500, (seconds, peak_mb)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no -o, no lock, no staging folder
