"""vxlan.underlay: the address watch looks when rtnetlink says the interface changed, not on a
timer (each look costs a netlink socket and two dumps); without notifications it polls."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct

import pytest

from vxlan import netconf, underlay
from vxlan.lease import Lease

IFACE = netconf.Iface(name="eth0", index=7, address="198.18.0.1", mtu=1500)


def nlmsg(kind: int, body: bytes) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + body + bytes(-length % 4)


def addr_msg(kind: int, index: int) -> bytes:  # ifaddrmsg: family, prefixlen, flags, scope, index
    return nlmsg(kind, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, index) + b"\x08\x00\x01\x00\xc6\x12\x00\x01")


def link_msg(kind: int, index: int) -> bytes:  # ifinfomsg: family, pad, type, index, flags, change
    return nlmsg(kind, struct.pack("=BBHiII", 0, 0, 1, index, 0, 0))


def test_concerns_reads_the_index_of_address_and_link_notifications():
    for kind in (underlay.RTM_NEWADDR, underlay.RTM_DELADDR):
        assert underlay.concerns(addr_msg(kind, 7), 7)
        assert not underlay.concerns(addr_msg(kind, 8), 7)
    for kind in (underlay.RTM_NEWLINK, underlay.RTM_DELLINK):
        assert underlay.concerns(link_msg(kind, 7), 7)
        assert not underlay.concerns(link_msg(kind, 8), 7)
    assert not underlay.concerns(nlmsg(24, bytes(12)), 7)  # RTM_NEWROUTE: not ours to look at
    # several messages in one datagram: the one about our interface is found
    assert underlay.concerns(link_msg(underlay.RTM_NEWLINK, 3) + addr_msg(underlay.RTM_DELADDR, 7), 7)


def test_concerns_stops_at_a_truncated_or_lying_message():
    whole = addr_msg(underlay.RTM_DELADDR, 7)
    assert not underlay.concerns(whole[:20], 7)
    assert not underlay.concerns(struct.pack("=IHHII", 4, underlay.RTM_DELADDR, 0, 0, 0) + whole[16:], 7)
    assert not underlay.concerns(struct.pack("=IHHII", 400, underlay.RTM_DELADDR, 0, 0, 0) + whole[16:], 7)
    assert not underlay.concerns(b"", 7)


class Registry:
    def __init__(self) -> None:
        self.released = 0

    async def release(self) -> bool:
        self.released += 1
        return True


def own_lease(address: str) -> Lease:
    return Lease(ipaddress.IPv4Network("10.5.1.0/24"), address, "vxlan")


def run_watch(monkeypatch, addresses: list, notifications, seconds: float, check_s: float = 0.02):
    """Run watch() for at most ``seconds`` with iface_addresses answering from ``addresses``
    (its last element once exhausted); return (looks, returned, registry)."""
    looks = []

    def iface_addresses(index: int):
        assert index == IFACE.index
        looks.append(index)
        return addresses[min(len(looks), len(addresses)) - 1]

    monkeypatch.setattr(netconf, "iface_addresses", iface_addresses)
    monkeypatch.setattr(underlay, "open_notifications", lambda ipv6=False: notifications)
    monkeypatch.setattr(underlay, "CHECK_S", check_s)
    monkeypatch.setattr(underlay, "SETTLE_S", 0.01)
    registry = Registry()

    async def main():
        try:
            await asyncio.wait_for(underlay.watch(IFACE, "198.18.0.1", own_lease("198.18.0.1"), registry), seconds)
            return True
        except TimeoutError:
            return False

    return looks, asyncio.run(main()), registry


def test_with_notifications_it_looks_once_and_then_only_when_told(monkeypatch):
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    looks, returned, _ = run_watch(monkeypatch, [["198.18.0.1"]], ours, 0.3)
    assert not returned and looks == [7]  # no timer: 0.3 s at CHECK_S 0.02 would be 15 looks
    kernel.close()


def test_a_notification_about_the_interface_makes_it_look_and_notice(monkeypatch):
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    kernel.send(link_msg(underlay.RTM_NEWLINK, 3))  # another interface: no look
    kernel.send(addr_msg(underlay.RTM_DELADDR, 7))  # ours: look, and the address is gone
    looks, returned, registry = run_watch(monkeypatch, [["198.18.0.1"], ["198.18.0.9"]], ours, 2.0)
    assert returned and len(looks) == 3, looks  # the first, the one told, and once settled
    assert registry.released == 1  # the lease named the dead address
    kernel.close()


def test_without_notifications_it_polls(monkeypatch):
    looks, returned, registry = run_watch(monkeypatch, [["198.18.0.1"]] * 4 + [None], None, 2.0)
    assert returned and len(looks) == 6  # (the last two: gone, and still gone once settled)
    assert registry.released == 1


def test_an_address_put_back_at_once_is_no_change(monkeypatch):
    """Deleted and added again in one go (a DHCP renewal, an operator's ip addr replace): the
    second look finds it, nothing is released and the watch goes on."""
    looks, returned, registry = run_watch(monkeypatch, [["198.18.0.1"], [], ["198.18.0.1"]], None, 0.3)
    assert not returned and len(looks) > 3 and registry.released == 0


def test_open_notifications_subscribes_where_the_kernel_allows():
    sock = underlay.open_notifications()
    if sock is None:
        pytest.skip("no AF_NETLINK here (a sandbox)")
    try:
        assert sock.getsockname()[1] == underlay.RTMGRP_LINK | underlay.RTMGRP_IPV4_IFADDR
        assert not sock.getblocking()
    finally:
        sock.close()
