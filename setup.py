"""Builds the Cython extension ``fastpath._fastpath``; all metadata lives in pyproject.toml.

``VXLAN_BUILD_NOCAPTURE=1`` also builds ``fastpath._fastpath_nocapture`` (the capture hook
compiled out): only ``python -m bench``'s "nohook" scenario uses it, and bench builds it in
place when it is missing, so the product never ships it.
"""

import importlib.util
import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

# The drop reasons are numbered in wire.py and in vxengine.h: refuse to build when they differ.
_spec = importlib.util.spec_from_file_location("reasons_check", Path(__file__).parent / "fastpath" / "reasons_check.py")
_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_check)
_differ = _check.mismatches(Path(__file__).parent)
if _differ:
    raise SystemExit("drop reasons differ between vxlan/wire.py and fastpath/vxengine.h: " + "; ".join(_differ))

# the engine, one file per job (fastpath/vxengine.h says which)
ENGINE = [f"fastpath/vx_{job}.c"
          for job in ("table", "table6", "csum", "offload", "tx", "rx", "rx_packet", "tunnel", "sched", "capture",
                      "bridge")]
HEADERS = ["fastpath/vxengine.h", "fastpath/vx_internal.h"]
extensions = [
    Extension("fastpath._fastpath", ["fastpath/_fastpath.pyx", *ENGINE], include_dirs=["fastpath"],
              depends=HEADERS, extra_compile_args=["-O2", "-Wall"]),
]
if os.environ.get("VXLAN_BUILD_NOCAPTURE") == "1":
    extensions.append(
        Extension("fastpath._fastpath_nocapture", ["fastpath/_fastpath_nocapture.pyx", *ENGINE],
                  include_dirs=["fastpath"], depends=[*HEADERS, "fastpath/_fastpath.pyx"],
                  define_macros=[("VX_NO_CAPTURE", "1")], extra_compile_args=["-O2", "-Wall"]))

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
