"""Fixtures of the hardening tests (issue #14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hardening_helpers import make_rule_models


@pytest.fixture(scope="session")
def rule_models(tmp_path_factory) -> Path:
    """Band models (lung and lesion intensities) in the training pipeline's layout: instant and exact."""
    return make_rule_models(tmp_path_factory.mktemp("hardening_models"))
