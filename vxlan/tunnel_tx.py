"""The tunnel GSO send path: a TAP that takes whole UDP tunnel super-packets (Linux >= 6.17) and a
tc ingress program (TCX, Linux >= 6.6) that hands each frame written into it straight to the
underlay interface's egress.

Why: a kernel vxlan device sends one 64 KB ``SKB_GSO_UDP_TUNNEL`` skb per TCP super-packet and a
kernel receiver decapsulates it whole; a ``UDP_SEGMENT`` train from a UDP socket is
``SKB_GSO_UDP_L4``, which a kernel vxlan receiver cuts into datagrams and handles one by one. The
engine writes each pod super-packet, encapsulated, into this TAP with the 24-byte virtio-net
header of ``TUN_F_UDP_TUNNEL_GSO`` (``fastpath/vx_tunnel.c``), so that the underlay carries the
same object a kernel vxlan device would send.

Why not let the kernel route the TAP's frames: they would arrive as forwarded packets, with
our own address as the source. That needs forwarding on, ``accept_local`` and no ``rp_filter``
on the TAP, and passes the FORWARD chain, whose policy is DROP on every host with Docker. The
program calls ``bpf_redirect_neigh`` (Linux 5.10) instead: a route lookup on the outer
destination restricted to the underlay interface (as the kernel vxlan device bound to
flannel's ``--iface`` sends, ``pkg/backend/vxlan/device.go``), the neighbour's MAC, out. No
sysctl and no firewall rule is touched; the price is that the host's netfilter does not see
these frames (the README says so). Everything here is undone by closing the two descriptors
(the TAP is not persistent, the program lives as long as its link).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

from vxlan.netconf import disable_ipv6
from vxlan.rtnl import IPRoute
from vxlan.tun import attached

IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ = 0x400454CA, 0x400454D0, 0x400454D8
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
TUN_F_UDP_TUNNEL_GSO = 0x080  # Linux 6.17, include/uapi/linux/if_tun.h
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100  # ... with the outer UDP checksum left partial (IPv6 frames need it)
TUNNEL_VNET_HDR_LEN = 24  # struct virtio_net_hdr_v1_hash_tunnel

# <linux/bpf.h>: the system headers here may predate TCX, so the numbers are written out
SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
BPF_PROG_LOAD, BPF_LINK_CREATE = 5, 28
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_TCX_INGRESS = 46  # Linux 6.6
BPF_FUNC_REDIRECT_NEIGH = 152  # Linux 5.10


class TunnelTxError(RuntimeError):
    """The tunnel GSO path cannot be had here; the message says why (logged, UDP trains used)."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, dst | src << 4, off, imm)


def redirect_program(out_ifindex: int) -> bytes:
    """``return bpf_redirect_neigh(out_ifindex, NULL, 0, 0);``: every frame that enters the TAP
    leaves by the underlay interface to its next hop (TC_ACT_REDIRECT; TC_ACT_SHOT if there is
    no route)."""
    mov64_imm, call, exit_ = 0xB7, 0x85, 0x95
    return (_insn(mov64_imm, 1, imm=out_ifindex) + _insn(mov64_imm, 2) + _insn(mov64_imm, 3) +
            _insn(mov64_imm, 4) + _insn(call, imm=BPF_FUNC_REDIRECT_NEIGH) + _insn(exit_))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _bpf(cmd: int, attr: bytes) -> int:
    buf = ctypes.create_string_buffer(attr, 128)  # the rest of union bpf_attr: zeros
    fd = _libc.syscall(SYS_BPF, cmd, buf, len(buf))
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return fd


def attach_redirect(tap_ifindex: int, out_ifindex: int) -> tuple[int, int]:
    """Load the program and attach it to the TAP's TCX ingress: (program fd, link fd). Closing
    the link fd detaches it."""
    prog = redirect_program(out_ifindex)
    insns = ctypes.create_string_buffer(prog, len(prog))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = struct.pack("<IIQQIIQII16sII", BPF_PROG_TYPE_SCHED_CLS, len(prog) // 8, ctypes.addressof(insns),
                       ctypes.addressof(license_), 1, len(log), ctypes.addressof(log), 0, 0, b"vxland_tunnel",
                       0, BPF_TCX_INGRESS)
    try:
        prog_fd = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()
        raise TunnelTxError(f"loading the redirect program: {exc.strerror}"
                            + (f" ({detail[-1]})" if detail else "")) from None
    try:
        link_fd = _bpf(BPF_LINK_CREATE, struct.pack("<IIII", prog_fd, tap_ifindex, BPF_TCX_INGRESS, 0))
    except OSError as exc:
        os.close(prog_fd)
        hint = "; kernel < 6.6 has no TCX" if exc.errno == errno.EINVAL else ""
        raise TunnelTxError(f"attaching it to the TAP's ingress: {exc.strerror}{hint}") from None
    return prog_fd, link_fd


class TunnelTx:
    """The TAP ``name`` with UDP tunnel GSO, its frames redirected out of interface
    ``out_ifindex``. ``fd`` is for the engine, ``mac`` the address its frames go to."""

    def __init__(self, name: str, out_ifindex: int, fd: int | None = None) -> None:
        """``fd``: the TAP a reload handed over (its bridge's program stays attached until the
        bridge ends; ours is attached beside it)."""
        self.name = name
        self.fd = -1
        self.csum = False  # the TAP takes frames whose outer UDP checksum is partial (IPv6 underlay)
        self._bpf_fds: tuple[int, ...] = ()
        try:
            self._open_tap(fd)
            self.index, self.mac = _bring_up(name)
            self._bpf_fds = attach_redirect(self.index, out_ifindex)
        except BaseException:
            self.close()
            raise

    @property
    def bpf_fds(self) -> tuple[int, ...]:
        """What keeps the redirect program attached (a reload's bridge holds them too)."""
        return self._bpf_fds

    def _open_tap(self, fd: int | None = None) -> None:
        if fd is not None:
            self.fd = fd
            name, flags = attached(fd)
            if name != self.name or not flags & IFF_TAP:
                raise TunnelTxError(f"the TAP handed over is {name} with flags {flags:#x}, not {self.name}")
        else:
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(self.fd, TUNSETIFF,
                            struct.pack("16sH", self.name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            except OSError as exc:
                raise TunnelTxError(f"cannot create TAP {self.name}: {exc.strerror}") from None
        fcntl.ioctl(self.fd, TUNSETVNETHDRSZ, struct.pack("i", TUNNEL_VNET_HDR_LEN))
        offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, offloads | TUN_F_UDP_TUNNEL_GSO_CSUM)
            self.csum = True
            return
        except OSError:
            pass  # without it the IPv6 underlay's super-packets are split; the IPv4 ones need no more
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, offloads)
        except OSError as exc:
            raise TunnelTxError(f"TAP refuses UDP tunnel GSO ({exc.strerror}; kernel < 6.17?)") from None

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        for fd in self._bpf_fds:
            os.close(fd)
        self._bpf_fds = ()
        if self.fd >= 0:
            os.close(self.fd)  # the TAP goes with it
            self.fd = -1


def _bring_up(name: str) -> tuple[int, bytes]:
    """IPv6 off on the TAP (no link-local address, no router solicitations: nothing is ever
    routed into it), up; its (ifindex, MAC)."""
    disable_ipv6(name)
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, state="up")
        link = ipr.get_links(index)[0]
    return index, bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
