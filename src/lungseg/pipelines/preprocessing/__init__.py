"""Preprocessing: intensity, CLAHE, crop, resize, slice filtering, patient split, EDA."""
