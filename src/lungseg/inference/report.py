"""Volumes, involvement and severity of a segmentation, and the files written for it.

Severity grade of a lung from the percentage ``p`` of its volume that is infected (the usual CT
severity scale, 0-5; the scale's gaps are closed as follows)::

    0  none      p == 0
    1  minimal   0  < p <  5
    2  mild      5  <= p <= 25
    3  moderate  25 < p <= 50
    4  severe    50 < p <= 75
    5  critical  p > 75
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import nibabel as nib
import numpy as np

from lungseg.errors import InputError
from lungseg.imaging.intensity import HU_WINDOW, window_to_uint8
from lungseg.inference.guard import NO_LUNGS, partial_scan
from lungseg.inference.segment import Segmentation
from lungseg.volume import Volume

logger = logging.getLogger(__name__)

SEVERITY_LABELS = ("none", "minimal", "mild", "moderate", "severe", "critical")
SEVERITY_SCALE = "0 none (0%), 1 minimal (<5%), 2 mild (5-25%), 3 moderate (>25-50%), 4 severe (>50-75%), 5 critical (>75%)"
#: Overlay colours (BGR for OpenCV): left lung, right lung, infection.
OVERLAY_COLOURS = {1: (80, 200, 0), 2: (255, 160, 0), 3: (30, 30, 255)}
OVERLAY_ALPHA = 0.4
REPORT_FILE = "report.json"
MASK_FILES = {
    "lung_mask": "lung_mask.nii.gz",
    "infection_mask": "infection_mask.nii.gz",
    "lung_and_infection_mask": "lung_and_infection_mask.nii.gz",
}


def severity_grade(percent: float) -> int:
    """CT severity grade 0-5 of an involvement percentage (see the module docstring for the bounds)."""
    p = float(percent)
    if math.isnan(p) or p < 0 or p > 100 + 1e-9:
        raise ValueError(f"involvement must be a percentage in [0, 100], got {percent!r}")
    if p == 0:
        return 0
    if p < 5:
        return 1
    if p <= 25:
        return 2
    if p <= 50:
        return 3
    if p <= 75:
        return 4
    return 5


def make_report(seg: Segmentation, spacing: Sequence[float]) -> dict:
    """Lung and infection volumes, involvement and severity, per lung and overall.

    Args:
        seg: the segmentation (canonical grid).
        spacing: voxel size (sz, sy, sx) in mm (taken at float32 precision, as a NIfTI header stores it:
            :func:`lungseg.inference.export.figure_spacing`).

    Returns:
        a JSON-serialisable dict: ``voxel_volume_ml``, ``voxels`` (counts), ``lung_volume_ml``,
        ``infection_volume_ml``, ``infection_percent`` and ``severity`` (each with ``left``, ``right``,
        ``total``), ``severity_label``, ``severity_scale``, ``no_lungs_found``, ``implausible_input``
        and ``message``. Volumes are voxel count × voxel volume (every float to 10 significant
        digits, :func:`lungseg.inference.export.tidy`). Infection figures are None
        when the infection task was not run. When the plausibility guard refused the input or the
        result (``seg.implausible_input``, also when no lung was found), ``implausible_input`` says
        why, and the involvement and severity are None: no grade is given for such an input.
        ``provenance`` names each model's training dataset, environment and recorded score
        (:mod:`lungseg.inference.provenance`); when models trained on synthetic phantoms ran on an
        input that is not one, ``severity`` is None and ``severity_withheld`` says why
        (``seg.severity_withheld``). ``volumes_nominal`` is True when the voxel size was assumed or is
        probably a placeholder (``seg.spacing_assumed``): the ml figures then follow from it, and the
        message says "nominal". A single slice gets its areas in pixels (``area_pixels``).
    """
    from lungseg.inference.export import figure_spacing, tidy

    spacing = figure_spacing(spacing)  # 0.7 mm from a float32 header is 0.7, not 0.699999988
    voxel_ml = float(np.prod(spacing)) / 1000.0
    lungs = np.asarray(seg.lung_labels)
    infected = np.asarray(seg.infection) > 0
    counts = {
        "left_lung": int(np.count_nonzero(lungs == 1)),
        "right_lung": int(np.count_nonzero(lungs == 2)),
        "infection_left": int(np.count_nonzero(infected & (lungs == 1))),
        "infection_right": int(np.count_nonzero(infected & (lungs == 2))),
    }
    counts["lung"] = counts["left_lung"] + counts["right_lung"]
    counts["infection"] = counts["infection_left"] + counts["infection_right"]
    lung_n = {"left": counts["left_lung"], "right": counts["right_lung"], "total": counts["lung"]}
    inf_n = {"left": counts["infection_left"], "right": counts["infection_right"], "total": counts["infection"]}
    ran_infection = "infection" in tuple(seg.tasks)
    no_lungs = counts["lung"] == 0
    implausible = getattr(seg, "implausible_input", None)
    partial = partial_scan(int(lungs.shape[0]), float(spacing[0]))

    def pct(side: str) -> float:
        return 100.0 * inf_n[side] / lung_n[side] if lung_n[side] else 0.0

    report: dict = {
        "shape_zyx": [int(s) for s in lungs.shape],
        "spacing_mm": [float(s) for s in spacing],
        "voxel_volume_ml": voxel_ml,
        "tasks": list(seg.tasks),
        "voxels": counts,
        "lung_volume_ml": {k: v * voxel_ml for k, v in lung_n.items()},
        "infection_volume_ml": None,
        "infection_percent": None,
        "severity": None,
        "severity_label": None,
        "severity_scale": SEVERITY_SCALE,
        "no_lungs_found": no_lungs,
        "implausible_input": implausible,
        "partial_scan": partial,
        "plausibility": getattr(seg, "guard_figures", None),
        "provenance": getattr(seg, "provenance", None),
        "severity_withheld": None,
        "volumes_nominal": bool(getattr(seg, "spacing_assumed", False)),
    }
    if ran_infection and implausible:
        report["infection_volume_ml"] = {k: v * voxel_ml for k, v in inf_n.items()}
    elif ran_infection:
        percent = {side: pct(side) for side in ("left", "right", "total")}
        grades = {side: severity_grade(p) for side, p in percent.items()}
        report.update(
            infection_volume_ml={k: v * voxel_ml for k, v in inf_n.items()},
            infection_percent=percent,
            severity=grades,
            severity_label={side: SEVERITY_LABELS[g] for side, g in grades.items()},
        )
    withheld = getattr(seg, "severity_withheld", None)
    if withheld and report["severity"] is not None:
        report.update(severity=None, severity_label=None, severity_withheld=withheld)
    if partial:  # no whole lungs: the percentages of the lung in view only, no ml and no grade
        report.update(lung_volume_ml=None, infection_volume_ml=None, severity=None, severity_label=None,
                      volumes_nominal=False)
    if int(lungs.shape[0]) == 1:  # a 2D image: its areas in pixels
        report["area_pixels"] = {"lung": lung_n, "infection": inf_n if ran_infection else None}
    nominal = " (nominal: the voxel size was assumed)" if report["volumes_nominal"] else ""
    if implausible and implausible != NO_LUNGS:
        report["message"] = f"Implausible input: {implausible}. No involvement or severity is given."
    elif no_lungs:
        report["message"] = "No lungs were found in this image; the masks are empty. Is it a chest CT?"
    elif partial and int(lungs.shape[0]) == 1:
        shown = (f"; infection {inf_n['total']} pixels ({report['infection_percent']['total']:.1f}% of the lungs)"
                 if report["infection_percent"] else "")
        report["message"] = (f"Lungs {lung_n['total']} pixels (left {lung_n['left']}, right {lung_n['right']}){shown}; "
                             "a single slice: no volumes in ml and no severity grade.")
    elif partial:
        shown = (f"; infection {report['infection_percent']['total']:.1f}% of the lung in view"
                 if report["infection_percent"] else "")
        report["message"] = f"Lungs found in {partial}{shown}."
    elif ran_infection:
        grade = (f"severity withheld: {withheld}" if report["severity_withheld"] else
                 f"severity {report['severity']['total']} {report['severity_label']['total']}")
        report["message"] = (
            f"Lungs {report['lung_volume_ml']['total']:.1f} ml; infection {report['infection_volume_ml']['total']:.1f} ml"
            f"{nominal} ({report['infection_percent']['total']:.1f}% of the lungs, {grade})."
        )
    else:
        report["message"] = f"Lungs {report['lung_volume_ml']['total']:.1f} ml{nominal} (infection not run)."
    return tidy(report)  # floats to 10 significant digits: no float noise (828.2860000000001) in any front end


# ----------------------------------------------------------------------------------------- overlays


def display_slices_u8(volume: Volume) -> np.ndarray:
    """The input as uint8 (z, y, x) for display: HU through the lung window :data:`HU_WINDOW`, 0-255 as
    is; both with :func:`lungseg.imaging.window_to_uint8`, as in the web UI."""
    arr = volume.array
    if arr.dtype == np.uint8:
        return arr
    lo, hi = float(np.min(arr)), float(np.max(arr))
    kind = "uint8" if lo >= 0 and hi <= 255 else "hu"  # 0-255 data may be stored in a wider type
    return window_to_uint8(arr, kind, HU_WINDOW)


def representative_slices(seg: Segmentation) -> dict[str, int]:
    """Slices to picture: the one with most lung, the one with most infection (if any), the middle."""
    z = seg.lung_labels.shape[0]
    picks = {"middle": z // 2}
    lung_area = np.count_nonzero(seg.lung_labels.reshape(z, -1), axis=1)
    if lung_area.any():
        picks["most_lung"] = int(np.argmax(lung_area))
    inf_area = np.count_nonzero(seg.infection.reshape(z, -1), axis=1)
    if inf_area.any():
        picks["most_infection"] = int(np.argmax(inf_area))
    return picks


def overlay_rgb(ct_u8_slice: np.ndarray, labels_slice: np.ndarray) -> np.ndarray:
    """A BGR picture of one slice with the labels (1, 2, 3) blended in colour and outlined."""
    base = cv2.cvtColor(np.ascontiguousarray(ct_u8_slice), cv2.COLOR_GRAY2BGR).astype(np.float32)
    out = base.copy()
    for label, colour in OVERLAY_COLOURS.items():
        mask = labels_slice == label
        if mask.any():
            out[mask] = (1 - OVERLAY_ALPHA) * base[mask] + OVERLAY_ALPHA * np.asarray(colour, np.float32)
    out = out.round().astype(np.uint8)
    for label, colour in OVERLAY_COLOURS.items():
        mask = (labels_slice == label).astype(np.uint8)
        if mask.any():
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, 1)
    return out


def _write_png(path: Path, image: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"cannot encode {path.name}")
    path.write_bytes(buf.tobytes())


# -------------------------------------------------------------------------------------------- write


def check_output_dir(outdir: str | Path, kind: str = "case", overwrite: bool = False) -> Path:
    """See :func:`lungseg.inference.ownership.check_output_dir`: absent, empty, or lungseg's own."""
    from lungseg.inference.ownership import check_output_dir as check

    return check(outdir, kind, overwrite)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (Path,)):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_outputs(
    volume: Volume,
    seg: Segmentation,
    report: dict,
    outdir: str | Path,
    ct_u8_for_overlays: np.ndarray | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the masks, overlay pictures and report of one input into ``outdir``, atomically.

    Written: ``lung_mask.nii.gz`` (1 left, 2 right), ``infection_mask.nii.gz`` (0/1),
    ``lung_and_infection_mask.nii.gz`` (1/2/3), each on the input's own grid, shape and affine;
    ``overlays/slice_XXX.png`` for the slices with most lung, most infection and the middle one;
    ``report.json``. For a 2D image input also ``lung_mask.png`` (0 background, 255 lung),
    ``infection_mask.png`` (0/255) and ``lung_and_infection_mask.png`` (labels × 85: 85 left lung,
    170 right lung, 255 infection), all of the input's size. ``lesions.csv``: the lesion table
    (:mod:`lungseg.inference.export`), also in report.json (``lesions``); ``metrics.csv`` when the
    report holds ground-truth scores (``ground_truth_scores``, a batch with masks). Floats in
    report.json and the CSV files are written to 10 significant digits. ``report`` gains ``lesions``
    (the table written) unless it already holds them.

    Everything is written into a staging folder beside ``outdir`` that is then moved in, so a
    failure leaves nothing half-written. ``outdir`` must be absent, empty, or a previous lungseg
    output (its ``.lungseg-output.json`` lists what is replaced; nothing else there is touched);
    ``overwrite`` lets it be any folder (same-named files replaced). See :mod:`lungseg.inference.ownership`.

    Returns:
        name → final path of every file written (names: the mask keys, ``report``, ``overlay_<z>``,
        and ``*_png`` for 2D inputs).
    """
    outdir = check_output_dir(outdir, "case", overwrite)
    try:
        return _write_outputs(volume, seg, report, outdir, ct_u8_for_overlays)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile...
        raise InputError(f"cannot write the outputs to {str(outdir)!r} ({type(exc).__name__}: {exc})") from exc


def _write_outputs(volume: Volume, seg: Segmentation, report: dict, outdir: Path, ct_u8_for_overlays) -> dict[str, Path]:
    canonical_shape = tuple(volume.array.shape)
    for name, arr in (("lung_labels", seg.lung_labels), ("infection", seg.infection)):
        if tuple(arr.shape) != canonical_shape:
            raise ValueError(f"{name} has shape {arr.shape}, the volume {canonical_shape}")
    from lungseg.inference.ownership import install_dir, staging_dir

    tmp = staging_dir(outdir)
    written: dict[str, str] = {}
    try:
        combined = seg.combined()
        arrays = {
            "lung_mask": seg.lung_labels,
            "infection_mask": seg.infection,
            "lung_and_infection_mask": combined,
        }
        for key, arr in arrays.items():
            nib.save(volume.to_nifti(np.asarray(arr, dtype=np.uint8), np.uint8), str(tmp / MASK_FILES[key]))
            written[key] = MASK_FILES[key]

        ct_u8 = display_slices_u8(volume) if ct_u8_for_overlays is None else np.asarray(ct_u8_for_overlays)
        if ct_u8.shape != canonical_shape:
            raise ValueError(f"overlay images have shape {ct_u8.shape}, the volume {canonical_shape}")
        (tmp / "overlays").mkdir()
        picks = representative_slices(seg)
        overlays = {}
        for why, k in sorted(picks.items(), key=lambda kv: kv[1]):
            rel = f"overlays/slice_{k:03d}.png"
            if rel not in overlays.values():
                _write_png(tmp / rel, overlay_rgb(ct_u8[k], combined[k]))
                written[f"overlay_{k:03d}"] = rel
            overlays[why] = rel

        from lungseg.inference.export import (
            LESION_COLUMNS,
            LESIONS_FILE,
            METRIC_TABLE_COLUMNS,
            METRICS_FILE,
            lesion_table,
            tidy,
            write_csv,
        )

        lesions = report.get("lesions")
        if lesions is None:
            lesions = report["lesions"] = lesion_table(volume, seg, volumes_in_ml=report.get("lung_volume_ml") is not None)
        write_csv(tmp / LESIONS_FILE, lesions, LESION_COLUMNS)
        written["lesions"] = LESIONS_FILE
        if report.get("ground_truth_scores"):
            write_csv(tmp / METRICS_FILE, report["ground_truth_scores"], METRIC_TABLE_COLUMNS)
            written["metrics"] = METRICS_FILE

        if volume.meta.get("input_kind") == "image" and canonical_shape[0] == 1:
            pngs = {
                "lung_mask_png": ("lung_mask.png", (seg.lung_labels[0] > 0).astype(np.uint8) * 255),
                "infection_mask_png": ("infection_mask.png", (seg.infection[0] > 0).astype(np.uint8) * 255),
                "lung_and_infection_mask_png": ("lung_and_infection_mask.png", combined[0] * np.uint8(85)),
            }
            for key, (name, img) in pngs.items():
                _write_png(tmp / name, img)
                written[key] = name

        full = {
            **report,
            "input": volume.meta.get("input", volume.source),
            "input_kind": volume.meta.get("input_kind"),
            "input_shape": [int(s) for s in volume.shape],
            "spacing_assumed": bool(volume.meta.get("spacing_assumed", False)),
            "spacing_note": volume.meta.get("spacing_note"),
            "spacing_source": volume.meta.get("spacing_source", "assumed" if volume.meta.get("spacing_assumed")
                                              else "header"),
            "lesions": lesions,
            "lesions_note": "lesions.csv: 3D 26-connected components of the infection mask, largest first; "
            "centroid_z/y/x in canonical voxels (z = overlays' slice), centroid_i/j/k in the input's own voxels, "
            "*_mm in scanner RAS+ mm; lung from the predicted lung labels; mean_hu only for HU input",
            "overlays": overlays,
            "overlays_note": "slice_XXX = axial slice XXX of the canonical (z, y, x) volume, z from inferior to "
            "superior, shown in the radiological view (patient's left on the right of the picture); "
            "green = left lung, blue = right lung, red = infection",
            "outputs": {k: v for k, v in written.items()},
        }
        if volume.meta.get("input_kind") == "dicom":
            full["dicom_series"] = {
                k: volume.meta.get(k) for k in ("series_uid", "series_description", "n_series")
            }
        (tmp / REPORT_FILE).write_text(json.dumps(tidy(full), indent=2, default=_json_default))
        written["report"] = REPORT_FILE
        install_dir(tmp, outdir, "case")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d files to %s", len(written), outdir)
    return {k: outdir / v for k, v in written.items()}
