"""Shared fixtures: both codec implementations, so every wire test runs against each."""

from __future__ import annotations

import pytest

from vxlan import wire


def compiled_codec():
    try:
        from fastpath._fastpath import Codec
    except ImportError as exc:  # a missing build is a failure, not a skip
        pytest.fail(f"compiled fastpath not importable ({exc}); run 'pip install -e .'")
    return Codec


@pytest.fixture(params=["python", "cython"])
def codec_cls(request):
    """The reference codec and its compiled twin."""
    return wire.Codec if request.param == "python" else compiled_codec()
