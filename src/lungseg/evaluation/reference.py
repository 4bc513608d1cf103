"""Published reference results, for the comparison chart (see ../shared/DESIGN.md, "Reference numbers").

They are not comparable one to one with this project's numbers: the paper averages over slices with a
slice-level split (slices of a patient can be in both train and test), the COVID-19-CT-Seg benchmark
averages over cases. The ``level`` column says which.
"""

from __future__ import annotations

import pandas as pd

from lungseg.errors import ConfigError
from lungseg.layout import VARIANTS, check_task, split_variant, variant_architecture, variant_task

#: The paper's slice-level figures, per variant: the one home of these numbers.
PAPER: dict[str, dict[str, float]] = {
    "lung_unet": {"dice": 0.8513, "iou": 0.7652},
    "lung_deeplabv3plus": {"dice": 0.8623, "iou": 0.7831},
    "infection_unet": {"dice": 0.7210, "iou": 0.6450},
}
_ARCHITECTURE_LABELS = {"unet": "U-Net", "deeplabv3plus": "DeepLabV3+"}


def paper_figures(variant: str) -> dict[str, float]:
    """The paper's ``{"dice", "iou"}`` for ``variant`` (a copy); ``{}`` for a variant the paper did not
    report (``infection_deeplabv3plus``, or another ``<task>_<architecture>`` found in an old report).

    Raises:
        ConfigError: ``variant`` is not a ``<task>_<architecture>`` name.
    """
    if split_variant(variant) is None:
        raise ConfigError(f"{variant!r} is not a variant name (<task>_<architecture>, e.g. {', '.join(VARIANTS)})")
    return dict(PAPER.get(variant, {}))


#: One dict per published result: task, variant (label), level, dice, iou (None when not reported), note.
REFERENCE_RESULTS: tuple[dict, ...] = (
    *({"task": variant_task(v), "variant": f"paper {_ARCHITECTURE_LABELS[variant_architecture(v)]}",
       "level": "slice", **figures, "note": "paper, slice-level split"} for v, figures in PAPER.items()),
    {"task": "lung", "variant": "nnU-Net 2D (4 train cases)", "level": "case", "dice": 0.95, "iou": None,
     "note": "COVID-19-CT-Seg benchmark, about 0.95"},
    {"task": "infection", "variant": "nnU-Net 2D (4 train cases)", "level": "case", "dice": 0.61, "iou": None,
     "note": "COVID-19-CT-Seg benchmark, about 0.61"},
    {"task": "lung", "variant": "nnU-Net 3D (16/4 split)", "level": "case", "dice": 0.915, "iou": None,
     "note": "COVID-19-CT-Seg benchmark, 0.91-0.92 (midpoint shown)"},
    {"task": "infection", "variant": "nnU-Net 3D (16/4 split)", "level": "case", "dice": 0.77, "iou": None,
     "note": "COVID-19-CT-Seg benchmark"},
    {"task": "lung", "variant": "lungmask R231", "level": "case", "dice": 0.98, "iou": None,
     "note": "lungmask R231 on routine CT"},
)


def reference_table(task: str) -> pd.DataFrame:
    """The published results for ``task`` as rows ready for ``plot_metric_comparison`` (kind 'reference')."""
    check_task(task)
    rows = [{**r, "kind": "reference"} for r in REFERENCE_RESULTS if r["task"] == task]
    df = pd.DataFrame(rows, columns=["task", "variant", "kind", "level", "dice", "iou", "note"])
    df["iou"] = pd.to_numeric(df["iou"], errors="coerce")
    return df
