# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The same module built with the capture hook compiled out (VX_NO_CAPTURE): only for
# ``python -m bench``'s "nohook" scenario, which measures what the hook costs.
include "_fastpath.pyx"
