"""Evaluation of every variant on held-out patients, beside a classical baseline."""
