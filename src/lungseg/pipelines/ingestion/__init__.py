"""Ingestion: metadata.csv + raw NIfTI volumes -> validated, canonical cases."""
