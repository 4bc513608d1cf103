"""Pure array functions shared by training, evaluation, inference and the UI.

One implementation of every image operation (intensity, crop, resize/unresize, slice filter,
augmentation, binary mask operations in :mod:`lungseg.imaging.masks`, post-processing) and :func:`prepare_slices` / :func:`restore_slices`, which chain
them. numpy + OpenCV + scipy.ndimage only; no I/O.
"""

from lungseg.imaging.augment import AugmentParams, augment_batch, random_affine, random_augment, random_intensity
from lungseg.imaging.crop import Box, body_box, lung_box
from lungseg.imaging.intensity import (
    HU_WINDOW,
    SOURCE_KINDS,
    apply_clahe,
    detect_source_kind,
    looks_unwindowed,
    to_unit_float,
    window_to_uint8,
)
from lungseg.imaging.masks import (
    IN_PLANE,
    bounding_box,
    clear_border_2d,
    fill_holes_2d,
    fill_holes_3d,
    label_components,
    largest_components,
    remove_small_objects,
)
from lungseg.imaging.pipeline import (
    CONTEXT_MIN_CORRELATION,
    CROP_MODES,
    PreprocessConfig,
    context_neighbours,
    crop_and_resize,
    enhance,
    prepare_masks,
    prepare_slices,
    restore_masks,
    restore_slices,
    slice_breaks,
)
from lungseg.imaging.postprocess import (
    clean_lung_mask,
    fill_holes,
    keep_largest_components,
    split_left_right,
)
from lungseg.imaging.resize import (
    ResizeRecord,
    crop_pad_resize,
    records_from_array,
    records_to_array,
    uncrop_unresize,
    unresize_box,
)
from lungseg.imaging.slice_filter import informative_slices, select_infection_slices

__all__ = [
    "CROP_MODES",
    "HU_WINDOW",
    "IN_PLANE",
    "SOURCE_KINDS",
    "AugmentParams",
    "Box",
    "PreprocessConfig",
    "ResizeRecord",
    "apply_clahe",
    "augment_batch",
    "body_box",
    "bounding_box",
    "clear_border_2d",
    "clean_lung_mask",
    "CONTEXT_MIN_CORRELATION",
    "context_neighbours",
    "crop_and_resize",
    "crop_pad_resize",
    "detect_source_kind",
    "enhance",
    "fill_holes",
    "fill_holes_2d",
    "fill_holes_3d",
    "informative_slices",
    "keep_largest_components",
    "label_components",
    "largest_components",
    "looks_unwindowed",
    "lung_box",
    "prepare_masks",
    "prepare_slices",
    "slice_breaks",
    "random_affine",
    "random_augment",
    "random_intensity",
    "records_from_array",
    "records_to_array",
    "remove_small_objects",
    "restore_masks",
    "restore_slices",
    "select_infection_slices",
    "split_left_right",
    "to_unit_float",
    "uncrop_unresize",
    "unresize_box",
    "window_to_uint8",
]
