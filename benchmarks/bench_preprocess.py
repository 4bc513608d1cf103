"""Preprocessing speed and memory: the project's streaming pipeline against a naive baseline.

Measured in one run:

* slices/s on one full-profile synthetic case (512 x 512 HU slices): load the NIfTI, window,
  CLAHE, body crop, pad + resize to 224;
* peak RSS of preprocessing a whole synthetic set (each pass in its own subprocess);
* both for a naive baseline: float64 ``get_fdata``, per-slice Python loops, a new CLAHE object per
  slice, and every volume of the set held in memory at once.

Usage::

    python benchmarks/bench_preprocess.py                 # demo set for RSS, one full-size case for speed
    python benchmarks/bench_preprocess.py --rss-profile full   # RSS over the full 20-case profile (slow)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np
from scipy import ndimage

SIZE = 224


# --------------------------------------------------------------------------- the two implementations
def project_case(path: Path, kind: str | None = None) -> int:
    """The project's path: native-dtype read, canonical order, LUT window, CLAHE, crop, resize."""
    from lungseg.imaging import PreprocessConfig, crop_and_resize, detect_source_kind, enhance
    from lungseg.volume import load_canonical

    vol = load_canonical(nib.load(str(path)))
    kind = kind or detect_source_kind(vol.array)
    cfg = PreprocessConfig(image_size=SIZE)
    images, _ = crop_and_resize(enhance(vol.array, kind, cfg), cfg, progress=False)
    return len(images)


def naive_slices(data: np.ndarray) -> list[np.ndarray]:
    """What a first notebook does: float64 math and a Python loop over slices."""
    out = []
    for k in range(data.shape[2]):
        sl = data[:, :, k].T.astype(np.float64)
        sl = np.clip(sl, -1250, 250)
        sl = (sl + 1250) / 1500 * 255
        u8 = sl.round().astype(np.uint8)
        u8 = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(u8)
        mask = u8 > 60
        lab, n = ndimage.label(mask)
        if n:
            sizes = ndimage.sum(mask, lab, range(1, n + 1))
            ys, xs = np.nonzero(lab == (int(np.argmax(sizes)) + 1))
            u8 = u8[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1]
        h, w = u8.shape
        side = max(h, w)
        sq = np.zeros((side, side), np.float64)
        sq[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = u8
        out.append(cv2.resize(sq, (SIZE, SIZE), interpolation=cv2.INTER_AREA) / 255.0)
    return out


def naive_case(path: Path) -> int:
    return len(naive_slices(nib.load(str(path)).get_fdata()))


# --------------------------------------------------------------------------- whole-set passes (subprocess)
def whole_set(mode: str, root: Path) -> dict:
    import pandas as pd

    meta = pd.read_csv(root / "metadata.csv")
    paths = [root / p.split("covid19-ct-scans/")[-1] for p in meta["ct_scan"]]
    t0 = time.perf_counter()
    n = 0
    if mode == "project":
        for p in paths:  # streams: one case at a time
            n += project_case(p)
    else:
        volumes = [nib.load(str(p)).get_fdata() for p in paths]  # everything in memory, float64
        for v in volumes:
            n += len(naive_slices(v))
    dt = time.perf_counter() - t0
    return {"mode": mode, "slices": n, "seconds": dt, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Unlike ru_maxrss, it is not inherited from the parent
    across fork + exec, so a child's figure is its own."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_subprocess(mode: str, root: Path) -> dict:
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_preprocess as b; "
            f"print(json.dumps(b.whole_set({mode!r}, __import__('pathlib').Path({str(root)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lungseg-bench")
    ap.add_argument("--rss-profile", default="demo", choices=["demo", "full"])
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from lungseg.synthetic import generate_case, write_dataset

    # ---- speed on one full-profile case (512 x 512, HU), gzipped as the dataset ships it and plain
    case_path = args.workdir / "speed_case.nii.gz"
    plain_path = args.workdir / "speed_case.nii"
    if not case_path.exists() or not plain_path.exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        case = next(c for c in (generate_case(i, "full", seed=7) for i in range(20))
                    if c.source_kind == "hu" and c.ct.shape[1] == 512 and c.ct.shape[0] >= 200)
        img = nib.Nifti1Image(np.ascontiguousarray(case.ct.transpose(2, 1, 0)), np.diag([-0.7, -0.7, 1.0, 1.0]))
        nib.save(img, str(case_path))
        nib.save(img, str(plain_path))
    shape = nib.load(str(case_path)).shape
    print(f"speed, one case of shape {shape} (x, y, z), dtype {nib.load(str(case_path)).get_data_dtype()}, "
          f"best of {args.repeats}, read + window + CLAHE + crop + resize to {SIZE}:")
    for label, path in (("from .nii.gz (gzip decompression included)", case_path), ("from .nii", plain_path)):
        timings = {}
        for name, fn in (("project", project_case), ("naive", naive_case)):
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                n = fn(path)
                best = min(best, time.perf_counter() - t0)
            timings[name] = n / best
        print(f"  {label}:")
        print(f"    project: {timings['project']:8.1f} slices/s   (target >= 100)")
        print(f"    naive:   {timings['naive']:8.1f} slices/s")
        print(f"    ratio project/naive: {timings['project'] / timings['naive']:.2f}x   (target >= 3)")

    # ---- the .nii.gz read alone: nibabel's zlib stream against python-isal's igzip (lungseg.volume.load_nifti,
    # what lungseg predict, the UI and the ground-truth reader use), same file, same array
    from lungseg.volume import load_nifti

    reads = {}
    for name, fn in (("zlib (nib.load)", lambda p: nib.load(str(p))), ("isal (load_nifti)", load_nifti)):
        best = float("inf")
        for _ in range(max(2, args.repeats)):
            t0 = time.perf_counter()
            arr = np.asanyarray(fn(case_path).dataobj)
            best = min(best, time.perf_counter() - t0)
        reads[name] = (best, arr)
    (z_s, z_arr), (i_s, i_arr) = reads.values()
    assert np.array_equal(z_arr, i_arr), "isal and zlib reads differ"
    print(f"  .nii.gz read alone ({case_path.stat().st_size / 1e6:.0f} MB gzipped): zlib {z_s:.3f} s, isal {i_s:.3f} s "
          f"-> ratio {z_s / i_s:.2f}x (same array)")
    del reads, z_arr, i_arr, arr

    # ---- peak RSS over a whole set
    root = args.workdir / f"set_{args.rss_profile}"
    if not (root / "metadata.csv").exists():
        write_dataset(root, profile=args.rss_profile, seed=42)
    proj = run_subprocess("project", root)
    naive = run_subprocess("naive", root)
    print(f"peak RSS, whole {args.rss_profile} set ({proj['slices']} slices), each pass in its own process:")
    print(f"  project: {proj['peak_rss_mb']:8.0f} MB  ({proj['seconds']:.1f} s)")
    print(f"  naive:   {naive['peak_rss_mb']:8.0f} MB  ({naive['seconds']:.1f} s)")
    print(f"  ratio naive/project: {naive['peak_rss_mb'] / proj['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
