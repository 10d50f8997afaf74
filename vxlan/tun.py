"""The TUN device: open it (python-pytun), probe its offloads, hand the data plane the fd.

``IFF_TUN | IFF_NO_PI``: bare IP packets, which is what a VXLAN tunnel carries once the inner
Ethernet header is stripped. With offloads (the default with the compiled data plane) the
device also gets ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(CSUM | TSO4 | TSO6 | USO4 | USO6)``:
every read then starts with a 10-byte virtio_net_hdr and may be a TCP or UDP super-packet of
up to 64 KiB, and every write may be a coalesced one (drivers/net/tun.c TUNSETOFFLOAD,
include/uapi/linux/virtio_net.h; USO needs Linux 6.2 and is dropped alone when refused). If the kernel refuses, the
device is reopened without them and the reason is logged. The device is not persistent:
closing the fd (or the process dying) removes it with its addresses and routes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

import pytun

log = logging.getLogger(__name__)

IFNAMSIZ = 16  # including the terminating NUL
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40  # Linux >= 6.2
IFF_VNET_HDR = 0x4000


class TunError(RuntimeError):
    pass


class Tun:
    def __init__(self, name: str, offload: bool = False) -> None:
        if not name or len(name) >= IFNAMSIZ or "/" in name or " " in name:
            raise TunError(f"--tun-name {name!r}: interface names are 1-15 characters without '/' or spaces")
        if not os.path.exists("/dev/net/tun"):
            raise TunError("/dev/net/tun is missing: load the tun module (modprobe tun) or pass the device in")
        self.vnet_hdr = False
        self.uso = False  # UDP super-packets both ways (Linux >= 6.2)
        self.offload_error: str | None = None
        self.uso_error: str | None = None
        if offload:
            self._open(name, IFF_VNET_HDR)
            tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
            try:
                fcntl.ioctl(self._dev.fileno(), TUNSETOFFLOAD, tcp | TUN_F_USO4 | TUN_F_USO6)
                self.vnet_hdr = self.uso = True
            except OSError as exc:
                self.uso_error = f"TUN USO refused ({exc.strerror}; kernel < 6.2?)"
                try:
                    fcntl.ioctl(self._dev.fileno(), TUNSETOFFLOAD, tcp)
                    self.vnet_hdr = True
                except OSError as exc2:
                    self.offload_error = f"TUNSETOFFLOAD refused: {exc2.strerror}"
                    self._dev.close()
        if not self.vnet_hdr:
            self._open(name, 0)
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        os.set_blocking(self.fd, False)

    def _open(self, name: str, extra_flags: int) -> None:
        try:
            self._dev = pytun.TunTapDevice(name=name, flags=pytun.IFF_TUN | pytun.IFF_NO_PI | extra_flags)
        except pytun.Error as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
            if code == errno.EBUSY:
                raise TunError(f"cannot create TUN {name}: a device of that name exists and is in use "
                               "(another vxland or a kernel flannel.<VNI>?)") from None
            if code == errno.EPERM:
                raise TunError(f"cannot create TUN {name}: permission denied (vxland needs root "
                               "or CAP_NET_ADMIN)") from None
            raise TunError(f"cannot create TUN {name}: {exc}") from None

    def close(self) -> None:
        if self.fd >= 0:
            self._dev.close()
            self.fd = -1
