"""The TUN device: open it (python-pytun), probe its offloads, hand the data plane the fd.

``IFF_TUN | IFF_NO_PI``: bare IP packets, which is what a VXLAN tunnel carries once the inner
Ethernet header is stripped. With offloads (the default with the compiled data plane) the
device also gets ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(CSUM | TSO4 | TSO6 | USO4 | USO6)``:
every read then starts with a 10-byte virtio_net_hdr and may be a TCP or UDP super-packet of
up to 64 KiB, and every write may be a coalesced one (drivers/net/tun.c TUNSETOFFLOAD,
include/uapi/linux/virtio_net.h; USO needs Linux 6.2 and is dropped alone when refused). If the kernel refuses, the
device is reopened without them and the reason is logged. The device is not persistent:
closing the fd (or the process dying) removes it with its addresses and routes; a reload
hands the fd to the next image (``Tun.adopt``), so the device lives on.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct

import pytun

log = logging.getLogger(__name__)

IFNAMSIZ = 16  # including the terminating NUL
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40  # Linux >= 6.2
IFF_VNET_HDR = 0x4000
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
TUNGETIFF = 0x800454D2  # the attached device's name and flags (struct ifreq)


class TunError(RuntimeError):
    pass


def attached(fd: int) -> tuple[str, int]:
    """The name and flags (IFF_*) of the TUN or TAP device ``fd`` is attached to (TUNGETIFF);
    OSError if it is none."""
    ifr = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return ifr[:IFNAMSIZ].split(b"\0", 1)[0].decode(errors="replace"), struct.unpack_from("=H", ifr, IFNAMSIZ)[0]


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
        self._dev = None
        if offload:
            self._open(name, IFF_VNET_HDR)
            self.vnet_hdr = self._set_offloads(self._dev.fileno())
            if not self.vnet_hdr:
                self._dev.close()
        if not self.vnet_hdr:
            self._open(name, 0)
        self.name = self._dev.name
        self.fd = self._dev.fileno()
        os.set_blocking(self.fd, False)

    @classmethod
    def adopt(cls, fd: int, name: str, offload: bool) -> Tun | None:
        """The TUN a reload handed over as ``fd``, if it is ``name`` with the vnet header as
        ``offload`` wants (a TUN's flags cannot change while it is attached); else None, the fd
        closed (the device then goes, and the caller makes it anew)."""
        try:
            got, flags = attached(fd)
        except OSError as exc:
            log.warning("reload: descriptor %d is no TUN (%s); making %s anew", fd, exc.strerror, name)
            os.close(fd)
            return None
        want = IFF_TUN | IFF_NO_PI
        if got != name or flags & want != want or bool(flags & IFF_VNET_HDR) != offload:
            log.warning("reload: the TUN handed over is %s with flags %#x; making %s anew (offloads %s)", got, flags,
                        name, "on" if offload else "off")
            os.close(fd)
            return None
        tun = cls.__new__(cls)
        tun.vnet_hdr, tun.uso, tun.offload_error, tun.uso_error, tun._dev = False, False, None, None, None
        if offload:
            tun.vnet_hdr = tun._set_offloads(fd)
            if not tun.vnet_hdr:  # (it had them before the reload; a kernel does not take them back)
                os.close(fd)
                return None
        tun.name, tun.fd = name, fd
        os.set_blocking(fd, False)
        return tun

    def _set_offloads(self, fd: int) -> bool:
        """TUNSETOFFLOAD with USO, else without; False (the reason kept) if refused."""
        tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, tcp | TUN_F_USO4 | TUN_F_USO6)
            self.uso = True
            return True
        except OSError as exc:
            self.uso_error = f"TUN USO refused ({exc.strerror}; kernel < 6.2?)"
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, tcp)
            return True
        except OSError as exc2:
            self.offload_error = f"TUNSETOFFLOAD refused: {exc2.strerror}"
            return False

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

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            if self._dev is not None:
                self._dev.close()
            else:
                os.close(self.fd)
            self.fd = -1
