"""One target under atheris: ``python -m tests.fuzz.one TARGET SECONDS [INPUT...]`` (inputs
given: replay them once instead of fuzzing)."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["vxlan", "tests.fuzz"]):
    from tests.fuzz.targets import TARGETS

HERE = Path(__file__).resolve().parent


def main() -> None:
    name, seconds, inputs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    findings = HERE / "findings"
    findings.mkdir(exist_ok=True)
    args = [sys.argv[0], f"-artifact_prefix={findings}/{name}-", "-rss_limit_mb=4096", "-timeout=10",
            "-max_len=70000"]
    args += inputs if inputs else [f"-max_total_time={seconds}", str(corpus)]
    atheris.Setup(args, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
