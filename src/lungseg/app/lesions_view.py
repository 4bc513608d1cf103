"""The lesion table as the page shows it: the rows of ``lesions.csv`` (:func:`lungseg.inference.export.lesion_table`,
the same function the CLI writes it with), in fewer, readable columns.

Nothing here imports Streamlit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def lesion_frame(rows: Sequence[Mapping[str, Any]]):
    """A DataFrame of the lesion rows: id, ml (or voxels), lung, axial slices, centroid in voxels
    (z, y, x) and in scanner mm (x, y, z), and the mean HU where the input is HU."""
    import pandas as pd

    def fmt(row, keys, digits):
        return ", ".join(f"{float(row[k]):.{digits}f}" for k in keys)

    table = pd.DataFrame(
        {
            "lesion": [int(r["id"]) for r in rows],
            "volume (ml)": [None if r["volume_ml"] is None else round(float(r["volume_ml"]), 3) for r in rows],
            "voxels": [int(r["voxels"]) for r in rows],
            "lung": [r["lung"] for r in rows],
            "slices (z)": [f"{r['slice_first']}-{r['slice_last']}" for r in rows],
            "centroid z, y, x (voxels)": [fmt(r, ("centroid_z", "centroid_y", "centroid_x"), 1) for r in rows],
            "centroid x, y, z (mm)": [fmt(r, ("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), 1) for r in rows],
            "mean HU": [None if r["mean_hu"] is None else round(float(r["mean_hu"]), 1) for r in rows],
        }
    )
    return table.dropna(axis=1, how="all")  # no ml for a single slice, no HU for 0-255 input


def selected_row(event: Any) -> int | None:
    """The row chosen in ``st.dataframe(..., on_select="rerun", selection_mode="single-row")``'s event
    (its ``selection.rows``), or None when none is."""
    selection = getattr(event, "selection", None)
    if selection is None and isinstance(event, Mapping):
        selection = event.get("selection")
    rows = (selection.get("rows") if isinstance(selection, Mapping) else getattr(selection, "rows", None)) or []
    return int(rows[0]) if rows else None
