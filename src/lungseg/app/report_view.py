"""The report as the page shows it: headline figures (ml for a volume, pixels and percentages for a
2D slice), the model used, and the warning when the predicted lungs leave out dense tissue.

Nothing here imports Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Dense tissue, for the consolidation check: at or above -300 HU (consolidation is about -100 to
#: +50 HU, aerated lung below -500). On a 0-255 input: the same HU through the model window.
DENSE_HU = -300.0
#: Bites out of the predicted lungs up to this size are closed when looking for left-out tissue
#: (mm for a volume; a share of the image width for a 2D slice, whose pixel size is unknown).
CLOSING_MM = 20.0
CLOSING_2D_FRACTION = 0.05
#: Warn when left-out dense tissue is at least this share of the predicted lung.
LEFT_OUT_WARN_FRACTION = 0.05


def slice_report(report: Mapping[str, Any], seg) -> dict:
    """A 2D slice's report: areas in pixels and percentages; no ml and no severity grade (both
    mean something only for whole lungs in a volume)."""
    lungs = np.asarray(seg.lung_labels)
    infected = np.asarray(seg.infection) > 0
    lung_px = {"left": int(np.count_nonzero(lungs == 1)), "right": int(np.count_nonzero(lungs == 2))}
    lung_px["total"] = lung_px["left"] + lung_px["right"]
    out: dict[str, Any] = {
        "input": "2D slice (areas in pixels; no volumes for a single slice)",
        "image_pixels": int(lungs[0].size),
        "lung_area_pixels": lung_px,
        "lung_percent_of_image": 100.0 * lung_px["total"] / max(int(lungs[0].size), 1),
        "implausible_input": report.get("implausible_input"),
        "no_lungs_found": bool(report.get("no_lungs_found")),
    }
    if "infection" in tuple(seg.tasks):
        inf_px = {
            "left": int(np.count_nonzero(infected & (lungs == 1))),
            "right": int(np.count_nonzero(infected & (lungs == 2))),
        }
        inf_px["total"] = inf_px["left"] + inf_px["right"]
        out["infection_area_pixels"] = inf_px
        out["infection_percent_of_lung_area"] = (
            None
            if report.get("implausible_input")
            else {k: 100.0 * inf_px[k] / lung_px[k] if lung_px[k] else 0.0 for k in ("left", "right", "total")}
        )
    if report.get("implausible_input") or report.get("no_lungs_found"):
        out["message"] = report.get("message")
    else:
        infection = out.get("infection_percent_of_lung_area")
        out["message"] = f"Lungs {lung_px['total']} px ({out['lung_percent_of_image']:.1f} % of the image)" + (
            f"; infection {infection['total']:.1f} % of the lung area." if infection else "."
        )
    return out


def headline(report: Mapping[str, Any], is_2d: bool) -> list[tuple[str, str]]:
    """The figures shown on top of the report (label, value). None for an implausible input: the
    page shows the warning instead."""
    if report.get("implausible_input"):
        return []
    rows: list[tuple[str, str]] = []
    if is_2d:
        area = report.get("lung_area_pixels") or {}
        if "total" in area:
            rows.append(("Lung area", f"{int(area['total'])} px"))
            rows.append(("Lungs in the image", f"{float(report['lung_percent_of_image']):.1f} %"))
        percent = report.get("infection_percent_of_lung_area") or {}
        for side, label in (
            ("left", "Left lung area involved"),
            ("right", "Right lung area involved"),
            ("total", "Lung area involved"),
        ):
            if side in percent:
                rows.append((label, f"{float(percent[side]):.1f} %"))
        return rows
    lung = report.get("lung_volume_ml") or {}
    if "total" in lung:
        rows.append(("Lung volume", f"{float(lung['total']):.1f} ml"))
    percent = report.get("infection_percent") or {}
    for side, label in (("left", "Left lung involved"), ("right", "Right lung involved"), ("total", "Lungs involved")):
        if side in percent:
            rows.append((label, f"{float(percent[side]):.1f} %"))
    severity = report.get("severity") or {}
    if "total" in severity:
        rows.append(("Severity grade", f"{int(severity['total'])}/5"))
    return rows


def models_line(models: Mapping[str, Any]) -> str:
    """One line naming the models used: ``lung: lung_unet (version), validation case Dice 0.951; ...``."""
    parts = []
    for task, m in models.items():
        score = f"{m['score_name']} {m['score']:.3f}" if m.get("score") is not None else "no recorded score"
        kind = ", fold ensemble" if m.get("fold_ensemble") else ""
        parts.append(f"{task}: {m['variant']} (version {m['version']}{kind}), {score}")
    return "; ".join(parts)


def left_out_dense(ct: np.ndarray, source_kind: str, lungs: np.ndarray, spacing, is_2d: bool) -> float:
    """The dense tissue the predicted lungs leave out, as a share of the predicted lung.

    Per axial slice, each lung's mask is closed (bites up to :data:`CLOSING_MM`) and holes filled;
    dense pixels (:data:`DENSE_HU` and above) inside that outline but outside the lung are counted.
    Consolidation at the lung's edge is where a lung model trained on aerated lung stops, and the
    infection model only looks inside the predicted lungs, so such tissue caps the infection found.
    """
    import cv2
    from scipy import ndimage

    from lungseg.imaging import window_to_uint8

    lungs = np.asarray(lungs)
    total = int(np.count_nonzero(lungs))
    if total == 0:
        return 0.0
    threshold = int(round((DENSE_HU + 1250.0) / 1500.0 * 255))  # the model window, -1250..250 HU
    width = lungs.shape[2]
    radius = max(2, int(round(CLOSING_2D_FRACTION * width if is_2d else CLOSING_MM / float(spacing[2]))))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    left_out = 0
    for z in np.flatnonzero(lungs.reshape(lungs.shape[0], -1).any(axis=1)):
        for label in (1, 2):
            where = np.nonzero(lungs[z] == label)
            if not where[0].size:
                continue
            # the lung's bounding box and the closing's reach: the rest of the slice cannot count
            y0, y1 = max(0, where[0].min() - radius), where[0].max() + radius + 1
            x0, x1 = max(0, where[1].min() - radius), where[1].max() + radius + 1
            lung = np.pad((lungs[z, y0:y1, x0:x1] == label).astype(np.uint8), radius)
            dense = np.pad(np.asarray(window_to_uint8(ct[z, y0:y1, x0:x1], source_kind)) >= threshold, radius)
            closed = ndimage.binary_fill_holes(cv2.morphologyEx(lung, cv2.MORPH_CLOSE, disk))
            left_out += int(np.count_nonzero(closed & (lung == 0) & dense))
    return left_out / total
