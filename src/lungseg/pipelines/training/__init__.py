"""Training: one template, four namespaced variants."""
