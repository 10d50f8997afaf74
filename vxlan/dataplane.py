"""The data plane's I/O: TUN fd <-> codec <-> UDP socket, in batches.

``ThreadedDataPlane`` (the compiled engine): two threads, one per direction, run C loops that
never take the GIL; Python only starts and stops them. ``DataPlane`` (the pure-Python
reference, ``VXLAN_PURE_PYTHON=1``): both directions are readiness callbacks
(``loop.add_reader``) that drain up to ``batch`` packets into a fixed pool of buffers, hand
the whole batch to the codec, then do the I/O. No buffer is allocated and nothing is logged
per packet; counters are plain integers read by ``/metrics``. The UDP socket stays blocking
for sends, so a full socket buffer pushes back on the TUN queue (as a NIC queue would)
instead of dropping, while receives never wait.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import logging
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable

from vxlan import wire
from vxlan.codec import BatchCodec
from vxlan.wire import HEADROOM, DropReason

log = logging.getLogger(__name__)

BATCH = 64
# <linux/in.h>, <linux/udp.h>, <asm-generic/socket.h>: Python 3.11's socket module lacks them.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IP_RECVTOS = 13
TOS_CMSG_SPACE = socket.CMSG_SPACE(4)  # room for the IP_TOS (1 byte) or IPV6_TCLASS (int) cmsg with a datagram
IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT = 23, 0
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
SO_DETACH_FILTER = 27
# <linux/if_packet.h>, <linux/if_ether.h>
SOL_PACKET = 263
PACKET_VNET_HDR = 15
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
SOCKET_BUFFER_BYTES = 7 << 20  # wireguard-go f26efb6: 7 MB ended its retransmits
BUF_SIZE = HEADROOM + 65536  # room for any datagram or TUN packet


class _Pool:
    """``n`` reusable buffers and the per-packet result slots of one direction."""

    def __init__(self, n: int, headroom: int = HEADROOM) -> None:
        self.bufs = [bytearray(BUF_SIZE) for _ in range(n)]
        self.views = [memoryview(b) for b in self.bufs]
        self.payload_views = [v[headroom:] for v in self.views]  # where TUN reads land
        self.lengths = [0] * n
        self.verdicts = [0] * n
        self.aux: list = [None] * n  # destinations (tx) or senders (rx)
        self.inner = [0] * n


class DataPlane:
    def __init__(self, codec: BatchCodec, tun_fd: int, sock: socket.socket | None, batch: int = BATCH,
                 sock6: socket.socket | None = None) -> None:
        self.codec = codec
        self.tun_fd = tun_fd
        self.sock = sock  # the IPv4 underlay's (None: an IPv6-only node, sock6 alone)
        self.sock6 = sock6  # a dual-stack node's IPv6 underlay socket: IPv6 peers' datagrams go and come by it
        self.batch = batch
        # bytes in front of the inner packet: VXLAN + Ethernet, or none for flannel's udp backend
        self.headroom = codec.headroom
        self._tx = _Pool(batch, self.headroom)
        self._rx = _Pool(batch, self.headroom)
        self._tos = [0] * batch  # the received datagrams' outer TOS bytes
        self.tx_packets = self.tx_bytes = 0  # inner packets/bytes sent into the tunnel
        self.rx_packets = self.rx_bytes = 0  # inner packets/bytes written to the TUN
        # before any check: per side, received = forwarded + that side's drops (DropReason.side)
        self.tun_received = self.udp_received = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # called (on the event loop) with the reason when the TUN fails for good (deleted)
        self.on_failure: Callable[[str], None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.tun_fd, self._on_tun_readable)
        if self.sock is not None:
            loop.add_reader(self.sock.fileno(), self._on_udp_readable, self.sock)
        if self.sock6 is not None:
            loop.add_reader(self.sock6.fileno(), self._on_udp_readable, self.sock6)

    def io_stats(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun_fd)
            if self.sock is not None:
                self._loop.remove_reader(self.sock.fileno())
            if self.sock6 is not None:
                self._loop.remove_reader(self.sock6.fileno())
            self._loop = None

    def _on_tun_readable(self) -> None:
        pool = self._tx
        fd = self.tun_fd
        n = 0
        while n < self.batch:
            try:
                pool.lengths[n] = os.readv(fd, [pool.payload_views[n]])
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                # EBADFD: the TUN was deleted. It stays "readable", so the reader would spin.
                self.stop()
                if self.on_failure is not None:
                    self.on_failure(f"reading the TUN failed: {exc.strerror}")
                return
            n += 1
        if not n:
            return
        self.tun_received += n
        ok = self.codec.encap_batch(pool.bufs, pool.lengths, n, pool.verdicts, pool.aux)
        if self.codec.pending_tun:
            self._write_pending()
        if ok:
            self._send(n)

    def _write_pending(self) -> None:
        """ICMP errors the codec wants delivered back into the TUN."""
        pending = self.codec.pending_tun
        for reply in pending:
            try:
                os.write(self.tun_fd, reply)
            except OSError:
                self.codec.count_drop(DropReason.TUN_WRITE_FAILED)
        pending.clear()

    def _send(self, n: int) -> None:
        """The batch's forwarded packets to their peers."""
        pool = self._tx
        hr = self.headroom
        ecn_outer = wire.ecn_outer if self.headroom else None  # VXLAN: RFC 6040; udp backend: none
        sent = sent_bytes = failed = 0
        for i in range(n):
            if pool.verdicts[i]:
                continue
            length = pool.lengths[i]
            ecn = ecn_outer(pool.views[i][hr : hr + 2]) if ecn_outer is not None and length >= 2 else 0
            v6 = ":" in pool.aux[i][0]  # an IPv6 peer: by the IPv6 underlay socket
            sock = self.sock6 if v6 else self.sock
            try:
                if sock is None:
                    raise OSError("no underlay socket of this family")
                if ecn:  # the outer header's TOS (traffic class) for this datagram, as the engine does
                    cmsg = ((socket.IPPROTO_IPV6, socket.IPV6_TCLASS) if v6 else (socket.IPPROTO_IP, socket.IP_TOS))
                    sock.sendmsg([pool.views[i][: hr + length]], [(*cmsg, ecn.to_bytes(4, sys.byteorder))], 0,
                                 pool.aux[i])
                else:
                    sock.sendto(pool.views[i][: hr + length], pool.aux[i])
            except OSError:
                failed += 1
                continue
            sent += 1
            sent_bytes += length
        self.tx_packets += sent
        self.tx_bytes += sent_bytes
        if failed:
            self.codec.count_drop(DropReason.SEND_FAILED, failed)

    def _on_udp_readable(self, sock: socket.socket | None = None) -> None:
        pool = self._rx
        recv = (sock or self.sock).recvmsg_into
        tos = self._tos
        n = 0
        for _ in range(self.batch):
            try:
                nbytes, ancdata, _, addr = recv([pool.bufs[n]], TOS_CMSG_SPACE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                continue  # a queued ICMP error (e.g. port unreachable); the next read goes on
            pool.lengths[n] = nbytes
            pool.aux[n] = addr[0]
            tos[n] = 0
            for level, kind, data in ancdata:  # IP_RECVTOS, IPV6_RECVTCLASS: the outer ECN field
                if level == socket.IPPROTO_IP and kind == socket.IP_TOS and data:
                    tos[n] = data[0]
                elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_TCLASS and len(data) >= 4:
                    tos[n] = int.from_bytes(data[:4], sys.byteorder) & 0xFF
            n += 1
        if not n:
            return
        self.udp_received += n
        if not self.codec.decap_batch(pool.bufs, pool.lengths, pool.aux, n, pool.verdicts, pool.inner, tos):
            return
        fd = self.tun_fd
        hr = self.headroom
        written = written_bytes = failed = 0
        for i in range(n):
            if pool.verdicts[i]:
                continue
            length = pool.inner[i]
            try:
                os.write(fd, pool.views[i][hr : hr + length])
            except OSError:
                failed += 1
                continue
            written += 1
            written_bytes += length
        self.rx_packets += written
        self.rx_bytes += written_bytes
        if failed:
            self.codec.count_drop(DropReason.TUN_WRITE_FAILED, failed)


def _set_buffers(sock: socket.socket) -> None:
    """Send and receive buffers of SOCKET_BUFFER_BYTES; beyond net.core.[rw]mem_max needs
    CAP_NET_ADMIN (the FORCE options), else as much as the limit allows."""
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)


def open_udp_socket(address: str, port: int) -> socket.socket:
    """The tunnel socket, bound to the underlay address and the VXLAN port.

    Outer packets go out without DF (IP_PMTUDISC_DONT), like a Linux vxlan device with the
    default ``df unset``, so a smaller underlay fragments instead of black-holing.
    """
    return _bound_udp_socket(socket.AF_INET, [(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT),
                                              (socket.IPPROTO_IP, IP_RECVTOS, 1)],  # the outer TOS (ECN)
                             address, port)


def open_udp6_socket(address: str, port: int) -> socket.socket:
    """A dual-stack node's second tunnel socket: IPv6 only, bound to the PublicIPv6 and the
    VXLAN port, as a kernel flannel-v6.<VNI> device listens beside flannel.<VNI>. Its datagrams
    always carry a UDP checksum (RFC 8200; RFC 6935 allows zero only toward receivers that
    accept it, and a kernel device does not: noudp6zerocsumrx). The host may fragment a
    datagram above the path MTU (IPV6_PMTUDISC_DONT), as the IPv4 socket goes out without DF."""
    return _bound_udp_socket(socket.AF_INET6, [(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1),
                                               (socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT),
                                               (socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)],  # (ECN)
                             address, port)


def _bound_udp_socket(family: int, options: list[tuple[int, int, int]], address: str, port: int) -> socket.socket:
    """A UDP socket with ``options`` (level, name, value), our buffers, bound; closed again if any fails."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        for level, name, value in options:
            sock.setsockopt(level, name, value)
        _set_buffers(sock)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def adopt_socket(fd: int, family: int, address: str | None, port: int | None) -> socket.socket | None:
    """The socket a reload handed over as ``fd``, if it is of ``family`` and (for UDP) bound to
    ``address``:``port``; else None, the fd closed (the caller opens one anew). A filter it had
    stays (``receive_again`` takes it off)."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None
    bound = sock.getsockname()[:2] if family != socket.AF_PACKET else None
    if sock.family != family or (address is not None and bound != (address, port)):
        log.warning("reload: the socket handed over (%s) does not fit (%s:%s); opening one anew", bound, address, port)
        sock.close()
        return None
    return sock


def _attach_filter(sock: socket.socket, program: list[tuple[int, int, int, int]]) -> None:
    """A classic BPF program (code, jt, jf, k) on ``sock`` (SO_ATTACH_FILTER copies it)."""
    insns = (ctypes.c_ubyte * (8 * len(program)))()
    for i, (code, jt, jf, k) in enumerate(program):
        struct.pack_into("=HBBI", insns, 8 * i, code, jt, jf, k)
    fprog = struct.pack("@HP", len(program), ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


SKF_NET_OFF = -0x100000  # <linux/filter.h>: offsets from the network header, whatever the link layer


def vxlan6_frame_filter(address: str, port: int) -> list[tuple[int, int, int, int]]:
    """IPv6 UDP (the next header itself, as a kernel vxlan device sends it) to ``address``:``port``."""
    ldb, ld, ldh, jeq, ret = 0x30, 0x20, 0x28, 0x15, 0x06

    def net(offset: int) -> int:
        return (SKF_NET_OFF + offset) & 0xFFFFFFFF
    words = struct.unpack("!4I", ipaddress.IPv6Address(address).packed)
    program = [(ldb, 0, 0, net(6)), (jeq, 0, 11, 17)]                       # next header UDP
    for i, word in enumerate(words):                                         # destination, word by word
        program += [(ld, 0, 0, net(24 + 4 * i)), (jeq, 0, 9 - 2 * i, word)]
    return program + [(ldh, 0, 0, net(42)), (jeq, 0, 1, port),               # UDP destination port
                      (ret, 0, 0, 0xFFFFFFFF), (ret, 0, 0, 0)]


def vxlan_frame_filter(address: str, port: int) -> list[tuple[int, int, int, int]]:
    """IPv4 UDP to ``address``:``port``, read relative to the network header (SKF_NET_OFF), so
    that it holds for Ethernet and for L3 devices (WireGuard, TUN) alike."""
    ldb, ld, ldxb_msh, ldh_x, jeq, ret = 0x30, 0x20, 0xB1, 0x48, 0x15, 0x06

    def net(offset: int) -> int:
        return (SKF_NET_OFF + offset) & 0xFFFFFFFF
    return [(ldb, 0, 0, net(9)), (jeq, 0, 6, 17),                                   # IP protocol UDP
            (ld, 0, 0, net(16)), (jeq, 0, 4, int(ipaddress.IPv4Address(address))),  # destination
            (ldxb_msh, 0, 0, net(0)), (ldh_x, 0, 0, net(2)), (jeq, 0, 1, port),    # UDP destination port
            (ret, 0, 0, 0xFFFFFFFF), (ret, 0, 0, 0)]


def open_packet_socket(address: str, port: int) -> socket.socket:
    """A packet socket (SOCK_RAW, PACKET_VNET_HDR: Linux >= 3.2) that reads the VXLAN frames
    for ``address``:``port`` arriving on any interface (a multi-homed host may receive them on
    another one than its --iface), each with a virtio-net header: what the kernel knows of
    their checksums (a kernel peer across a virtual link leaves inner checksums unfinished, a
    UDP socket cannot tell) and its tunnel super-packets whole. What was queued before the
    header and the filter were set is read away. An IPv6 ``address``: the IPv6 underlay's
    frames (a dual-stack node)."""
    v6 = ":" in address
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6 if v6 else ETH_P_IP))
    try:
        sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        _attach_filter(sock, (vxlan6_frame_filter if v6 else vxlan_frame_filter)(address, port))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        while True:
            try:
                sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
            except BlockingIOError:
                break
    except OSError:
        sock.close()
        raise
    return sock


def receive_again(sock: socket.socket) -> None:
    """Undo ``stop_receiving`` (a socket a reload handed over, now read from itself)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
    except OSError:
        pass  # it had no filter


def stop_receiving(sock: socket.socket) -> None:
    """Drop every datagram addressed to ``sock`` before it is queued (a filter that keeps
    nothing): the packet socket reads them. The socket stays bound, so the port stays ours
    and nobody is told "port unreachable"; it still sends."""
    _attach_filter(sock, [(0x06, 0, 0, 0)])


def probe_udp_offloads(sock: socket.socket) -> tuple[bool, bool, list[str]]:
    """(UDP GSO usable, UDP GRO on, reasons for what is off). GSO is probed by reading the
    socket option (setting it would change the default segment size of every send); it can
    still fail at the first send with EIO if the egress device lacks checksum offload, and
    the engine then falls back by itself."""
    reasons = []
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
        gso = True
    except OSError as exc:
        gso = False
        reasons.append(f"UDP GSO unavailable ({exc.strerror}; kernel < 4.18?)")
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        gro = True
    except OSError as exc:
        gro = False
        reasons.append(f"UDP GRO unavailable ({exc.strerror}; kernel < 5.0?)")
    return gso, gro, reasons


ENGINE_NICE = -10  # default nice value of the engine threads (--engine-nice)
ENGINE_SCHED = "auto"  # default scheduling policy of the engine threads (--engine-sched): auto, other or batch


def tune_engine_thread(tid: int, name: str, nice: int, sched: str = ENGINE_SCHED) -> list[str]:
    """Name an engine thread (``top -H``, ``ps -L``), give it ``nice`` and, with ``sched``
    "batch", make it SCHED_BATCH ("other" and "auto" leave it SCHED_OTHER; with "auto" the
    engine's loops switch by themselves, fastpath/vx_sched.c).

    Nice -10 weighs the threads as the kernel's own data path would be (softirq runs before
    any task): 4-stream TCP median 10.35 -> 11.45 Gbit/s, A/B in one vxland <-> vxland lab,
    2026-11-26. SCHED_OTHER: a woken engine thread preempts the task running on its CPU, as a
    softirq would. SCHED_BATCH does not: on an idle 2-core VM it cut the 64-byte UDP loss at
    205k pps from 2-4 % to 0.1-1 % (2026-11-26) and the daemon CPU per packet at 50k pps from
    16 to 6-8 us, but on a host whose CPUs are busy every packet waited for the running task's
    time slice: ping through vxland with two CPU-bound processes running, p50 4.05 ms vs
    0.066 ms (2026-11-30). Hence "auto". Returns what could not be done (e.g. a negative nice
    without CAP_SYS_NICE): the engine then runs with the defaults.
    """
    problems = []
    try:
        with open(f"/proc/self/task/{tid}/comm", "w") as f:
            f.write(name[:15])
    except OSError as exc:
        problems.append(f"thread name: {exc.strerror}")
    if sched == "batch":
        try:
            os.sched_setscheduler(tid, os.SCHED_BATCH, os.sched_param(0))
        except OSError as exc:
            problems.append(f"SCHED_BATCH: {exc.strerror}")
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)  # per thread on Linux (setpriority(2), BUGS)
    except OSError as exc:
        hint = " (a negative value needs CAP_SYS_NICE)" if nice < 0 else ""
        problems.append(f"nice {nice}: {exc.strerror}{hint}")
    return problems


class ThreadedDataPlane:
    """Runs the compiled engine's two loops in two threads (no GIL inside them)."""

    def __init__(self, engine, tun_fd: int, sock: socket.socket | None, vnet_hdr: bool, udp_gso: bool,
                 udp_gro: bool, tun_uso: bool = False, engine_nice: int = ENGINE_NICE, engine_sched: str = ENGINE_SCHED,
                 packet_sock: socket.socket | None = None, tx_socks: list[socket.socket] = (),
                 tunnel_tx=None, sock6: socket.socket | None = None,
                 packet_sock6: socket.socket | None = None, tx_socks6: list[socket.socket] = ()) -> None:
        self.engine = engine
        self.sock = sock
        self.engine_nice = engine_nice
        self.engine_sched = engine_sched
        self._stop_fd = os.eventfd(0, os.EFD_CLOEXEC)
        # for the outer headers of capture records (an IPv6-only node has no IPv4 socket: fd -1,
        # which the engine's poll skips and no IPv4 peer ever sends by)
        local_ip, local_port = sock.getsockname()[:2] if sock is not None else ("0.0.0.0", sock6.getsockname()[1])
        engine.attach(tun_fd, sock.fileno() if sock is not None else -1, self._stop_fd, vnet_hdr, udp_gso, udp_gro,
                      tun_uso, local_ip, local_port,
                      packet_sock.fileno() if packet_sock is not None else -1,
                      [(s.fileno(), s.getsockname()[1]) for s in tx_socks],
                      *((tunnel_tx.fd, tunnel_tx.mac) if tunnel_tx is not None else (-1, bytes(6))),
                      engine_sched == "auto", sock6.fileno() if sock6 is not None else -1,
                      packet_sock6.fileno() if packet_sock6 is not None else -1,
                      sock6.getsockname()[0] if sock6 is not None else "::",
                      tunnel_tx is not None and tunnel_tx.csum,
                      [(s.fileno(), s.getsockname()[1]) for s in tx_socks6])
        self._threads: list[threading.Thread] = []
        self._stopping = False
        # called (on the event loop) with the reason when an engine loop ends by itself
        self.on_failure: Callable[[str], None] | None = None

    def _run(self, loop: asyncio.AbstractEventLoop | None, name: str, target: Callable[[], None]) -> None:
        try:
            target()
            return
        except Exception as exc:  # the loop ended by itself: a TUN gone, no memory
            why = f"{name}: {exc}"
        if not self._stopping and loop is not None and self.on_failure is not None:
            loop.call_soon_threadsafe(self.on_failure, why)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        for name, target in (("vxland-tx", self.engine.run_tx), ("vxland-rx", self.engine.run_rx)):
            thread = threading.Thread(target=self._run, args=(loop, name, target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
            problems = tune_engine_thread(thread.native_id, name, self.engine_nice, self.engine_sched)
            if problems:
                log.warning("engine thread %s keeps some scheduling defaults: %s", name, "; ".join(problems))

    def stop(self) -> None:
        self._stopping = True
        if self._stop_fd >= 0:
            os.eventfd_write(self._stop_fd, 1)
            for thread in self._threads:
                thread.join(1.0)
            os.close(self._stop_fd)
            self._stop_fd = -1

    def _stat(self, name: str) -> int:
        return self.engine.stats()[name]

    tx_packets = property(lambda self: self._stat("tx_packets"))
    tx_bytes = property(lambda self: self._stat("tx_bytes"))
    rx_packets = property(lambda self: self._stat("rx_packets"))
    rx_bytes = property(lambda self: self._stat("rx_bytes"))
    tun_received = property(lambda self: self._stat("tun_received"))
    udp_received = property(lambda self: self._stat("udp_received"))

    def io_stats(self) -> dict[str, int]:
        stats = self.engine.stats()
        return {k: v for k, v in stats.items() if not k.startswith(("tx_", "rx_")) and not k.endswith("_received")}
