"""A short fuzz run of every parser that takes outside input (``tests/fuzz/targets.py``), and a
replay of the corpus ``make fuzz`` keeps: every input ends in a result or the parser's one
clean error, never a traceback or a crash of the C engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import compiled_codec
from tests.fuzz.targets import TARGETS

compiled_codec()  # fail, not skip, without the build
CORPUS = Path(__file__).resolve().parents[1] / "fuzz" / "corpus"
SETTINGS = dict(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.data_too_large])


@pytest.mark.parametrize("name", TARGETS)
@settings(**SETTINGS)
@given(data=st.binary(max_size=4096))
def test_random_bytes(name, data):
    TARGETS[name](data)


@pytest.mark.parametrize("name", TARGETS)
def test_corpus_replays(name):
    files = sorted((CORPUS / name).glob("*")) if (CORPUS / name).is_dir() else []
    assert files, f"no seed corpus for {name} in {CORPUS / name}"
    for path in files:
        TARGETS[name](path.read_bytes())
