"""#28 item 4, row 6: the memory limit counts decompressed bytes of the declared dtype, not voxels.
A small .nii.gz whose header declares float64 data within max_voxels but over max_voxels x 2 bytes is
refused from its header, in a fresh process, fast and without allocating the volume."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest
from hardening_helpers import PROJECT_ROOT, phantom, save_nifti

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


_CHILD = """
import resource, sys, time
from lungseg import cli
before = resource.getrusage(resource.RUSAGE_SELF)
try:
    rc = cli.main(sys.argv[1:])
finally:  # CPU seconds of the command's own work (wall time would measure the other tests' load too)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    # the peak of this process's own memory: VmHWM starts afresh at exec (ru_maxrss keeps the forking
    # parent's size, which in a pytest worker holding TensorFlow is over 1 GB)
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print("CPU_SECONDS", cpu, "PEAK_KB", hwm, file=sys.stderr)
sys.exit(rc)
"""


def test_the_cli_refuses_it_in_a_fresh_process_quickly_and_small(tmp_path):
    """Row 6's bound: refused within 2 CPU seconds of the command's work, the whole process under 500 MB."""
    src = tmp_path / "small.nii.gz"
    save_nifti(src, phantom(seed=1)[0])
    bomb = _declare(src, tmp_path / "bomb.nii.gz", (512, 512, 1600), datatype=64, bitpix=64)
    proc = subprocess.run([sys.executable, "-c", _CHILD, "predict", str(bomb), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lungseg: error:")]
    assert len(errors) == 1 and "bomb.nii.gz" in errors[0] and "GB of data" in errors[0]
    fields = proc.stderr.strip().splitlines()[-1].split()
    seconds, peak_mb = float(fields[1]), int(fields[3]) / 1024  # VmHWM is in kB
    assert seconds < 2 and peak_mb < 500, (seconds, peak_mb)
    assert not (tmp_path / "out").exists()
