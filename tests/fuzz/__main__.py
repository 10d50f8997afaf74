"""``make fuzz`` (``python -m tests.fuzz``): every target under atheris (coverage-guided, libFuzzer),
one after the other, each in its own process for a share of ``--seconds``.

The corpus is kept in the repository (``tests/fuzz/corpus/<target>/``): the seeds, plus what
libFuzzer finds that reaches new code, written back there by each run. A finding stops the
run with status 1 and leaves the input as ``tests/fuzz/findings/<target>-crash-...``; replay it
with ``python -m tests.fuzz.one TARGET 0 FILE``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from tests.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=int, default=660, help="in all, shared by the targets (default 660)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma list of " + ", ".join(TARGETS))
    args = p.parse_args(argv)
    names = [t for t in args.targets.split(",") if t]
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        print(f"unknown target(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    share = max(1, args.seconds // len(names))
    failed = []
    for name in names:
        print(f"=== {name}: {share} s", flush=True)
        if subprocess.run([sys.executable, "-m", "tests.fuzz.one", name, str(share)]).returncode:
            failed.append(name)
    if failed:
        print(f"findings in: {', '.join(failed)} (tests/fuzz/findings/)")
    print(f"fuzz: {len(names) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
