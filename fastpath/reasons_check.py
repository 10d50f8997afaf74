"""The drop reasons are numbered twice: ``vxlan/wire.py``'s ``DropReason`` (the reference, the
metric labels) and ``vxengine.h``'s enum (the compiled verdicts). Both are read as text here and
compared: ``setup.py`` refuses to build when they differ, and ``make test`` checks it again
(tests/unit/test_wire.py)."""

from __future__ import annotations

import re
from pathlib import Path


def reasons_of_wire(text: str) -> dict[str, int]:
    body = text.split("class DropReason", 1)[1].split("\n\n\n", 1)[0]
    return {name: int(value) for name, value in re.findall(r"^    ([A-Z_]+) = (\d+)", body, re.M)}


def reasons_of_header(text: str) -> dict[str, int]:
    body = text.split("/* Verdicts", 1)[1].split("};", 1)[0]
    return {name: int(value) for name, value in re.findall(r"VX_([A-Z_]+) = (\d+)", body)}


def mismatches(root: Path) -> list[str]:
    """What differs between the two lists (empty: they agree)."""
    wire = reasons_of_wire((root / "vxlan" / "wire.py").read_text())
    header = reasons_of_header((root / "fastpath" / "vxengine.h").read_text())
    out = []
    for name in sorted(set(wire) | set(header)):
        if wire.get(name) != header.get(name):
            out.append(f"{name}: wire.py {wire.get(name)}, vxengine.h {header.get(name)}")
    return out
