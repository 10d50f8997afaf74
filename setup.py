"""Builds the Cython extension ``fastpath._fastpath``; all metadata lives in pyproject.toml.

``VXLAN_BUILD_NOCAPTURE=1`` also builds ``fastpath._fastpath_nocapture`` (the capture hook
compiled out): only ``python -m bench``'s "nohook" scenario uses it, and bench builds it in
place when it is missing, so the product never ships it.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("fastpath._fastpath", ["fastpath/_fastpath.pyx", "fastpath/vxengine.c"],
              include_dirs=["fastpath"], depends=["fastpath/vxengine.h"],
              extra_compile_args=["-O2", "-Wall"]),
]
if os.environ.get("VXLAN_BUILD_NOCAPTURE") == "1":
    extensions.append(
        Extension("fastpath._fastpath_nocapture", ["fastpath/_fastpath_nocapture.pyx", "fastpath/vxengine.c"],
                  include_dirs=["fastpath"], depends=["fastpath/vxengine.h", "fastpath/_fastpath.pyx"],
                  define_macros=[("VX_NO_CAPTURE", "1")], extra_compile_args=["-O2", "-Wall"]))

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
