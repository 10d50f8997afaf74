"""The TUN device: open it (python-pytun), hand the data plane a non-blocking fd.

``IFF_TUN | IFF_NO_PI``: the kernel hands us bare IP packets, which is what a VXLAN tunnel
carries after the inner Ethernet header is stripped. The device is not persistent, so closing
the fd (or the process dying) removes it together with its addresses and routes.
"""

from __future__ import annotations

import errno
import os

import pytun

IFNAMSIZ = 16  # including the terminating NUL


class TunError(RuntimeError):
    pass


class Tun:
    def __init__(self, name: str) -> None:
        if not name or len(name) >= IFNAMSIZ or "/" in name or " " in name:
            raise TunError(f"--tun-name {name!r}: interface names are 1-15 characters without '/' or spaces")
        if not os.path.exists("/dev/net/tun"):
            raise TunError("/dev/net/tun is missing: load the tun module (modprobe tun) or pass the device in")
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI)
        except pytun.Error as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            if code == errno.EBUSY:
                raise TunError(f"cannot create TUN {name}: a device of that name exists and is in use "
                               "(another vxland or a kernel flannel.<VNI>?)") from None
            if code == errno.EPERM:
                raise TunError(f"cannot create TUN {name}: permission denied (vxland needs root "
                               "or CAP_NET_ADMIN)") from None
            raise TunError(f"cannot create TUN {name}: {exc}") from None
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        os.set_blocking(self.fd, False)

    def close(self) -> None:
        if self.fd >= 0:
            self._dev.close()
            self.fd = -1
