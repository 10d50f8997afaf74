"""vxland's log lines: levels, plain text or one JSON object per line, repeats folded.

A daemon that logs the same complaint every second (etcd down, a bad lease re-sent on every
watch event, iptables failing on each resync) buries the one line that matters. The first of a
run of identical messages goes out at once; further identical ones within ``window_s`` are
counted and held back, and the next one after the window says how many were folded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from collections import OrderedDict


class RepeatFilter(logging.Filter):
    """Let the first of identical messages through, count the rest for ``window_s`` seconds."""

    def __init__(self, window_s: float = 10.0, max_keys: int = 1024, clock=time.monotonic) -> None:
        super().__init__()
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # key -> [since, held]

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = self.clock()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.window_s:
            entry[1] += 1
            return False
        held = int(entry[1]) if entry is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        if held:
            record.msg = f"{record.getMessage()} (and {held} identical messages in the last {self.window_s:g} s)"
            record.args = ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(verbosity: int = 0, fmt: str = "text", stream=None) -> None:
    """Root logging for vxland and vxlanctl: INFO (DEBUG with -v), text or json, repeats folded."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
