"""Segmentation fixtures: the session's tiny nnU-Net model and its layout."""

from __future__ import annotations

import pytest
from labpipe.layout import Layout

from tests.lib.seg.seg_model import trained_tiny_model


@pytest.fixture(scope="session")
def tiny_model(labpipe_home):
    """A tiny nnU-Net model trained once per session (about a minute on an idle 2-core CPU)."""
    return trained_tiny_model(labpipe_home)


@pytest.fixture(scope="session")
def seg_layout(labpipe_home) -> Layout:
    return Layout.default(labpipe_home).ensure()
