"""Inference pipeline: segment every case of a folder of NIfTI files or a metadata.csv."""
