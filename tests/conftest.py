"""Shared fixtures. ``tiny_bundle``: a native bundle with the tiny model and tiny tokenizers (random, seed 0)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests import the builders in _tiny.py

from _tiny import make_tiny_bundle  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> str:
    """Path of a native bundle: tiny model config, compact layout, ByteTokenizer, tiny VQGAN, tiny WavTokenizer."""
    return make_tiny_bundle(str(tmp_path_factory.mktemp("tiny_bundle")), seed=0)
