"""Giving freed memory back to the system after a burst (a /8 of leases read at start)."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def trim() -> bool:
    """glibc keeps freed heap pages for reuse; ``malloc_trim(0)`` returns the free ones at the
    top of each arena and whole free pages inside it. False where there is no such call."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
