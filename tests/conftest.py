"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A fresh dataset cache (STEERFLOW_DATA) per test module: tiny datasets are generated there."""
    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("STEERFLOW_DATA", str(root))
    yield root
    mp.undo()
