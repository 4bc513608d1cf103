"""What the page says about where its models come from, and when their figures are not for reading.

Nothing here imports Streamlit. The words come from :mod:`lungseg.inference.provenance`, the CLI's own:
the sidebar line of a model is ``lungseg models``' (:func:`~lungseg.inference.provenance.model_summary`),
and the banner repeats the report's ``severity_withheld`` (set by the shared segmenter when a model
trained on synthetic phantoms meets an input that is not one of the generator's phantoms).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def sidebar_provenance(model) -> str:
    """One model of the sidebar (a :class:`lungseg.inference.choice.RankedModel`): its training dataset,
    environment and recorded score, as ``lungseg models`` prints them."""
    from lungseg.inference.provenance import model_summary

    return model_summary({"path": model.path, "ensemble": model.ensemble})


def provenance_lines(provenance: Mapping[str, Any]) -> list[str]:
    """One line per model used (the report's ``provenance``), as ``lungseg predict`` prints them:
    ``Lung model lung_unet: trained on synthetic_demo (env demo, ...); validation case Dice 0.955 on
    synthetic phantoms``."""
    from lungseg.inference.provenance import provenance_line

    return [provenance_line(task, p)[0].upper() + provenance_line(task, p)[1:] for task, p in provenance.items() if p]


def synthetic_banner(seg, report: Mapping[str, Any]) -> str | None:
    """The banner shown above the results when models trained on synthetic phantoms ran on an input that
    is not one (the segmentation's ``severity_withheld``, as report.json gives it); None otherwise."""
    why = report.get("severity_withheld") or getattr(seg, "severity_withheld", None)
    if not why:
        return None
    return (
        f"Not for interpretation: {why}. These models have never seen a real chest, so on real CT they can label "
        "the heart and the mediastinum as lung and infection; the severity grade is withheld "
        "(report: severity_withheld). Use models trained on real CT (see the sidebar's training data)."
    )


def spacing_note(volume) -> str | None:
    """Why the voxel size of an upload is not trusted (``spacing_assumed``: a placeholder 1 x 1 x 1 mm on
    0-255 data, a zero pixdim, a DICOM series without PixelSpacing), or None when it is."""
    meta = getattr(volume, "meta", None) or {}
    if not meta.get("spacing_assumed") or meta.get("input_kind") == "image":
        return None
    note = meta.get("spacing_note") or "the voxel size was assumed"
    return f"The voxel size is probably not the scan's: {note}. Volumes in ml are nominal until you give it."
