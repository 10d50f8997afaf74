"""The data plane's per-packet code: the compiled ``_fastpath`` or, failing that, the reference.

``Codec`` is ``fastpath._fastpath.Codec`` when the extension is built and importable, else
``vxlan.wire.Codec`` (same API, same bytes, slower). ``Engine`` (the Codec with the threaded
I/O loops and the offloads) exists only compiled; it is None with the reference. ``VXLAN_PURE_PYTHON=1`` forces the
reference, for comparison and debugging. ``IMPLEMENTATION`` says which one is in use and
``FALLBACK_REASON`` why, when it is the reference.
"""

from __future__ import annotations

import logging
import os

from vxlan import wire

log = logging.getLogger(__name__)

FALLBACK_REASON: str | None = None

if os.environ.get("VXLAN_PURE_PYTHON", "") not in ("", "0"):
    FALLBACK_REASON = "VXLAN_PURE_PYTHON is set"
else:
    try:
        if os.environ.get("VXLAN_FASTPATH_BUILD") == "nocapture":  # bench only: no capture hook
            from fastpath._fastpath_nocapture import Codec as _CompiledCodec
            from fastpath._fastpath_nocapture import Engine as _Engine
        else:
            from fastpath._fastpath import Codec as _CompiledCodec
            from fastpath._fastpath import Engine as _Engine
    except ImportError as exc:  # not built, or built for another Python
        FALLBACK_REASON = f"compiled extension unavailable ({exc}); run 'pip install -e .'"

if FALLBACK_REASON is None:
    Codec = _CompiledCodec
    Engine = _Engine
    IMPLEMENTATION = "cython"
else:
    Codec = wire.Codec  # type: ignore[misc,assignment]
    Engine = None
    IMPLEMENTATION = "python"
    log.warning("fastpath: using the pure-Python reference: %s", FALLBACK_REASON)

__all__ = ["Codec", "Engine", "IMPLEMENTATION", "FALLBACK_REASON"]
