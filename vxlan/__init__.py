"""vxland: a userspace VXLAN data plane that joins flannel overlays (see README.md)."""

__version__ = "0.1.0"
