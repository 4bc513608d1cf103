"""Synthetic-data pipeline: writes the embedded synthetic chest-CT dataset (Kaggle layout)."""
