"""Builds the Cython extension ``fastpath._fastpath``; all metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [
            Extension("fastpath._fastpath", ["fastpath/_fastpath.pyx", "fastpath/vxengine.c"],
                      include_dirs=["fastpath"], depends=["fastpath/vxengine.h"],
                      extra_compile_args=["-O2", "-Wall"]),
            # the capture hook compiled out, for bench's comparison only
            Extension("fastpath._fastpath_nocapture", ["fastpath/_fastpath_nocapture.pyx", "fastpath/vxengine.c"],
                      include_dirs=["fastpath"], depends=["fastpath/vxengine.h", "fastpath/_fastpath.pyx"],
                      define_macros=[("VX_NO_CAPTURE", "1")], extra_compile_args=["-O2", "-Wall"]),
        ],
        compiler_directives={"language_level": "3"},
    ),
)
