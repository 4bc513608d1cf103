"""Patient-level k-fold cross-validation pipelines (``<variant>_cv``)."""
