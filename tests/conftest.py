"""Fixtures shared by every test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT model dir (hidden size 32), shared by the session: do not modify it,
    copy it (shutil.copytree) when a test needs to change files."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))
