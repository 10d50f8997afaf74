"""The underlay address a node binds and announces can be taken away under it (DHCP, an
operator, a cloud agent). flanneld never notices and goes on announcing a dead address; vxland
says so and exits 1 so that its service manager starts it again, which finds the interface's
new address. With etcd, a lease naming the dead address is released first: the restart then
takes the same subnet again (the previous one, from subnet.env; see allocator.choose_subnet)
and the peers learn the new address from its lease."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

from vxlan import netconf
from vxlan.lease import Lease

log = logging.getLogger("vxland")

# The address is looked at when the kernel says something changed on the interface (rtnetlink
# notifications), not on a timer: each look builds a netlink socket and two dumps, some 1-3 ms
# of CPU on a small VM, and an engine thread woken on that CPU meanwhile waits for it (the
# idle RTT p99 spikes of README's bench notes). A slow look on a timer covers notifications
# lost without an error; without a notification socket (a sandbox), the timer is all there is.
CHECK_S = 2.0  # how often the address is looked for when no notification socket can be had
RESCAN_S = 60.0  # how often it is looked for anyway
SETTLE_S = 0.3  # after the address is seen gone, the second look (an address change is two steps)
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100  # linux/rtnetlink.h
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, seq, pid
IFADDRMSG_INDEX = struct.Struct("=I")  # after family, prefixlen, flags, scope (4 bytes)
IFINFOMSG_INDEX = struct.Struct("=i")  # after family, pad, type (4 bytes)


def concerns(buf: bytes | bytearray | memoryview, index: int) -> bool:
    """Whether a datagram of rtnetlink notifications says anything of interface ``index``: its
    link came, went or changed, or an address on it did. A truncated message ends the walk."""
    off = 0
    while off + NLMSG_HDR.size <= len(buf):
        length, kind = NLMSG_HDR.unpack_from(buf, off)[:2]
        if length < NLMSG_HDR.size or off + length > len(buf):
            return False
        body = off + NLMSG_HDR.size + 4
        if kind in (RTM_NEWADDR, RTM_DELADDR) and length >= NLMSG_HDR.size + 8:
            if IFADDRMSG_INDEX.unpack_from(buf, body)[0] == index:
                return True
        elif kind in (RTM_NEWLINK, RTM_DELLINK) and length >= NLMSG_HDR.size + 16:
            if IFINFOMSG_INDEX.unpack_from(buf, body)[0] == index:
                return True
        off += (length + 3) & ~3  # NLMSG_ALIGN
    return False


def open_notifications(ipv6: bool = False) -> socket.socket | None:
    """A non-blocking rtnetlink socket subscribed to link and address changes (IPv4, and IPv6
    for a dual-stack node), or None."""
    sock = None
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
                             socket.NETLINK_ROUTE)
        sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | (RTMGRP_IPV6_IFADDR if ipv6 else 0)))
        return sock
    except OSError as exc:
        if sock is not None:
            sock.close()
        log.debug("no rtnetlink notifications (%s): the underlay address is looked at every %.0f s",
                  exc.strerror, CHECK_S)
        return None


class _Notifications:
    """What the notification socket said since the last ``wait``: whether any of it concerns
    the interface (a lost batch, ENOBUFS, counts as concerning)."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock, self.index = sock, index
        self.buf = bytearray(65536)  # one buffer for every read
        self.changed = asyncio.Event()
        self.broken = False  # the socket failed: looked at every CHECK_S from then on
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        while True:
            try:
                n = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                self.changed.set()  # notifications were dropped or the socket failed: look
                if exc.errno == errno.ENOBUFS:
                    continue
                log.warning("rtnetlink notifications failed (%s): the underlay address is looked at every %.0f s",
                            exc.strerror, CHECK_S)
                self.broken = True
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
                return
            if concerns(memoryview(self.buf)[:n], self.index):
                self.changed.set()

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.changed.wait(), CHECK_S if self.broken else timeout)
        except TimeoutError:
            pass
        self.changed.clear()

    def close(self) -> None:
        if not self.broken:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def watch(iface: netconf.Iface, address: str | None, own: Lease | None, registry,
                address6: str | None = None) -> None:
    """Return once ``address`` (or a dual-stack node's ``address6``, its IPv6 underlay
    address) is no longer on ``iface`` (logged, our lease released if it names the address
    and is no reservation)."""
    sock = open_notifications(ipv6=address6 is not None)
    notes = _Notifications(sock, iface.index) if sock is not None else None

    async def missing() -> tuple[str, list[str] | None] | None:
        """(the address that is gone, what the interface has of its family now), or None."""
        present = await asyncio.to_thread(netconf.iface_addresses, iface.index)
        if present is None or (address is not None and address not in present):
            return address or address6, present  # (an IPv6-only node watches its IPv6 address alone)
        if address6 is not None:
            present6 = await asyncio.to_thread(netconf.iface_addresses, iface.index, True)
            if present6 is None or address6 not in present6:
                return address6, present6
        return None

    try:
        while True:  # the first look right away: a change before the subscription is not missed
            gone = await missing()
            if gone is not None:
                # a DHCP client or an operator changes an address in two steps (delete, add):
                # look again once the change has settled, to say what it became, and to carry
                # on if it was the same address put back
                await asyncio.sleep(SETTLE_S)
                gone = await missing()
                if gone is not None:
                    break
            if notes is not None:
                await notes.wait(RESCAN_S)
            else:
                await asyncio.sleep(CHECK_S)
    finally:
        if notes is not None:
            notes.close()
    address, present = gone
    family = "IPv6" if ":" in address else "IPv4"
    now = (f"interface {iface.name} is gone" if present is None
           else f"{iface.name} has {', '.join(present) or f'no {family} address'} now")
    log.error("the underlay address %s is gone (%s): peers cannot reach this node at it; exiting so that "
              "vxland is started again with the new address", address, now)
    if own is not None and address in (own.public_ip, own.v6.public_ip if own.v6 is not None else None):
        try:
            if await asyncio.wait_for(registry.release(), 10.0):
                log.info("our lease %s named %s: released, so that the restart takes the same subnet with "
                         "the new address", own.key, address)
        except Exception as exc:  # etcd down, say: best effort, the exit follows all the same
            log.warning("could not release our lease %s: %s", own.key, exc or type(exc).__name__)
