"""The asyncio glue of the data plane: TUN fd <-> codec <-> UDP socket, in batches.

Both directions are readiness callbacks (``loop.add_reader``) that drain up to ``batch``
packets into a fixed pool of buffers, hand the whole batch to the codec, then do the I/O. No
buffer is allocated and nothing is logged per packet; counters are plain integers read by
``/metrics``. The UDP socket stays blocking for sends, so a full socket buffer pushes back on
the TUN queue (as a NIC queue would) instead of dropping, while receives use MSG_DONTWAIT.
"""

from __future__ import annotations

import asyncio
import os
import socket

from vxlan.wire import HEADROOM, DropReason

BATCH = 64
# <linux/in.h>; the socket module of Python 3.11 does not export them.
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
BUF_SIZE = HEADROOM + 65536  # room for any datagram or TUN packet


class _Pool:
    """``n`` reusable buffers and the per-packet result slots of one direction."""

    def __init__(self, n: int) -> None:
        self.bufs = [bytearray(BUF_SIZE) for _ in range(n)]
        self.views = [memoryview(b) for b in self.bufs]
        self.payload_views = [v[HEADROOM:] for v in self.views]  # where TUN reads land
        self.lengths = [0] * n
        self.verdicts = [0] * n
        self.aux: list = [None] * n  # destinations (tx) or senders (rx)
        self.inner = [0] * n


class DataPlane:
    def __init__(self, codec, tun_fd: int, sock: socket.socket, batch: int = BATCH) -> None:
        self.codec = codec
        self.tun_fd = tun_fd
        self.sock = sock
        self.batch = batch
        self._tx = _Pool(batch)
        self._rx = _Pool(batch)
        self.tx_packets = self.tx_bytes = 0  # inner packets/bytes sent into the tunnel
        self.rx_packets = self.rx_bytes = 0  # inner packets/bytes written to the TUN
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.tun_fd, self._on_tun_readable)
        loop.add_reader(self.sock.fileno(), self._on_udp_readable)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun_fd)
            self._loop.remove_reader(self.sock.fileno())
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
            except OSError:
                break  # device going away during shutdown; the reader is removed next
            n += 1
        if not n:
            return
        if not self.codec.encap_batch(pool.bufs, pool.lengths, n, pool.verdicts, pool.aux):
            return
        sendto = self.sock.sendto
        sent = sent_bytes = failed = 0
        for i in range(n):
            if pool.verdicts[i]:
                continue
            length = pool.lengths[i]
            try:
                sendto(pool.views[i][: HEADROOM + length], pool.aux[i])
            except OSError:
                failed += 1
                continue
            sent += 1
            sent_bytes += length
        self.tx_packets += sent
        self.tx_bytes += sent_bytes
        if failed:
            self.codec.count_drop(DropReason.SEND_FAILED, failed)

    def _on_udp_readable(self) -> None:
        pool = self._rx
        recv = self.sock.recvfrom_into
        n = 0
        for _ in range(self.batch):
            try:
                nbytes, addr = recv(pool.bufs[n], 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                continue  # a queued ICMP error (e.g. port unreachable); the next read goes on
            pool.lengths[n] = nbytes
            pool.aux[n] = addr[0]
            n += 1
        if not n:
            return
        if not self.codec.decap_batch(pool.bufs, pool.lengths, pool.aux, n, pool.verdicts, pool.inner):
            return
        fd = self.tun_fd
        written = written_bytes = failed = 0
        for i in range(n):
            if pool.verdicts[i]:
                continue
            length = pool.inner[i]
            try:
                os.write(fd, pool.views[i][HEADROOM : HEADROOM + length])
            except OSError:
                failed += 1
                continue
            written += 1
            written_bytes += length
        self.rx_packets += written
        self.rx_bytes += written_bytes
        if failed:
            self.codec.count_drop(DropReason.TUN_WRITE_FAILED, failed)


def open_udp_socket(address: str, port: int, bufsize: int = 4 << 20) -> socket.socket:
    """The tunnel socket, bound to the underlay address and the VXLAN port.

    Outer packets go out without DF (IP_PMTUDISC_DONT), like a Linux vxlan device with the
    default ``df unset``, so a smaller underlay fragments instead of black-holing.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, bufsize)
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    return sock
