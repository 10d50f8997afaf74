"""Each backend driven through start, peer add/remove and stop without root: the TUN is one end
of a datagram socketpair, netlink calls are recorded, the underlay is loopback (127.0.0.1 is
us, 127.0.0.2 a peer). A packet written into the "TUN" comes out at the peer's socket in the
backend's wire format, and the peer's datagram comes out of the "TUN"."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest
from scapy.layers.inet import ICMP, IP

from vxlan import backends, netconf, wire
from vxlan.backends import ROUTE, TUNNEL, Context, StartupError, backend_for
from vxlan.backends import tunnel as tunnel_mod
from vxlan.config import parse_config
from vxlan.lease import Lease
from vxlan.options import Options

NET = ipaddress.IPv4Network
OWN_MAC, PEER_MAC = bytes.fromhex("0e0000000001"), bytes.fromhex("0e0000000002")


class FakeTun:
    """A TUN as the backends use it: ``fd`` passes whole packets both ways."""

    def __init__(self, name: str, offload: bool = False) -> None:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.setblocking(False)
        self.name = name.replace("%d", "0")
        self.fd = self.ours.fileno()
        self.vnet_hdr = self.uso = False
        self.offload_error = self.uso_error = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.ours.close()


@pytest.fixture
def host(monkeypatch):
    """Netlink recorded, TUNs faked; returns the list of netlink calls and the made TUNs."""
    calls: list[tuple] = []
    tuns: list[FakeTun] = []

    def make_tun(name, offload=False):
        tuns.append(FakeTun(name, offload))
        return tuns[-1]
    monkeypatch.setattr(tunnel_mod, "Tun", make_tun)
    monkeypatch.setattr(netconf, "configure_tun", lambda *a: calls.append(("configure_tun", a[0])))
    monkeypatch.setattr(netconf, "remove_route", lambda *a: calls.append(("remove_route", a[0])))
    monkeypatch.setattr(netconf, "gateway_routes", lambda network: {})
    monkeypatch.setattr(netconf, "replace_route", lambda dst, gw, oif=None: calls.append(("route", str(dst), gw)))
    monkeypatch.setattr(netconf, "delete_route", lambda dst, gw: calls.append(("unroute", str(dst), gw)))
    monkeypatch.setattr(netconf, "is_directly_connected", lambda ip: False)
    return calls, tuns


def context(loop, type_name: str, port: int, **opts) -> Context:
    config = parse_config({"Network": "10.5.0.0/16", "Backend": {"Type": type_name, "Port": port}})
    own = Lease(NET("10.5.1.0/24"), "127.0.0.1", type_name if type_name != "udp" else "", OWN_MAC, 1)
    iface = netconf.Iface("lo", 1, "127.0.0.1", 65536)
    return Context(Options(offload=False, **opts), config, own, iface, "127.0.0.1", 1450, loop)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def icmp(src: str, dst: str) -> bytes:
    return bytes(IP(src=src, dst=dst, ttl=9) / ICMP())


async def stop(ctx: Context) -> None:
    for cleanup in reversed(ctx.cleanups):
        result = cleanup()
        if asyncio.iscoroutine(result):
            await result


@pytest.mark.parametrize("type_name", ["vxlan", "udp"])
def test_tunnel_backends_carry_packets_both_ways(host, type_name):
    calls, tuns = host
    port = free_udp_port()

    async def main():
        loop = asyncio.get_running_loop()
        ctx = context(loop, type_name, port)
        backend = backend_for(type_name)
        backend.precheck(ctx.opts, ctx.iface, ctx.public_ip)
        await backend.start(ctx)
        assert calls[0] == ("configure_tun", tuns[0].name) and backend.device == f"TUN {tuns[0].name}"
        peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer_sock.bind(("127.0.0.2", port))
        peer_sock.setblocking(False)
        peer = Lease(NET("10.5.2.0/24"), "127.0.0.2", "vxlan" if type_name == "vxlan" else "", PEER_MAC, 1)
        assert await backend.add_peer(peer) == TUNNEL and backend.via(peer.subnet) == TUNNEL
        # out: pod packet into the TUN -> datagram at the peer
        packet = icmp("10.5.1.2", "10.5.2.2")
        tuns[0].theirs.send(packet)
        datagram = await asyncio.wait_for(loop.sock_recv(peer_sock, 65535), 3)
        if type_name == "vxlan":
            assert datagram[:8] == wire.vxlan_header(1) and datagram[8:14] == PEER_MAC
            assert datagram[wire.HEADROOM:] == packet
        else:  # flannel's udp proxy: the bare packet, TTL decremented
            assert datagram[8] == 8 and datagram[12:] == packet[12:]
        # in: the peer's datagram -> packet out of the TUN
        answer = icmp("10.5.2.2", "10.5.1.2")
        if type_name == "vxlan":
            answer_dgram = wire.encap_template(1, OWN_MAC, PEER_MAC) + answer
        else:
            answer_dgram = answer
        await loop.sock_sendto(peer_sock, answer_dgram, ("127.0.0.1", port))
        tuns[0].theirs.setblocking(False)  # the udp backend's loop runs on this event loop
        received = await asyncio.wait_for(loop.sock_recv(tuns[0].theirs, 65535), 3)
        assert received[12:] == answer[12:]
        # removed: the next packet has no route
        await backend.remove_peer(peer)
        await loop.sock_sendall(tuns[0].theirs, packet)
        await asyncio.sleep(0.2)
        drops = backend.codec.drop_counts()
        assert drops[wire.DropReason.NO_ROUTE] == 1
        peer_sock.close()
        await stop(ctx)
        assert tuns[0].closed and ("remove_route", tuns[0].name) in calls

    asyncio.run(main())


def test_host_gw_routes_peers_and_refuses_what_it_cannot_do(host):
    calls, tuns = host

    async def main():
        ctx = context(asyncio.get_running_loop(), "host-gw", 0)
        backend = backend_for("host-gw")
        backend.precheck(ctx.opts, ctx.iface, ctx.public_ip)
        await backend.start(ctx)
        peer = Lease(NET("10.5.2.0/24"), "127.0.0.2", "host-gw")
        assert await backend.add_peer(peer) == ROUTE and calls[-1] == ("route", "10.5.2.0/24", "127.0.0.2")
        await backend.remove_peer(peer)
        assert calls[-1] == ("unroute", "10.5.2.0/24", "127.0.0.2") and not tuns
        assert [name for name, _ in backend.tasks()] == ["route check"]

    asyncio.run(main())
    hostgw = backend_for("host-gw")
    with pytest.raises(StartupError, match="NAT"):
        hostgw.precheck(Options(), netconf.Iface("lo", 1, "127.0.0.1", 1500), "203.0.113.9")
    with pytest.raises(StartupError, match="--strict-source"):
        hostgw.precheck(Options(strict_source=True), netconf.Iface("lo", 1, "127.0.0.1", 1500), "127.0.0.1")
    with pytest.raises(StartupError, match="--capture"):
        backend_for("udp").precheck(Options(trace_rate=5), None, "127.0.0.1")
    with pytest.raises(StartupError):
        backend_for("wireguard")


def test_every_backend_has_the_declared_interface():
    members = [name for name in vars(backends.Backend) if not name.startswith("_")]
    for type_name in ("vxlan", "udp", "host-gw"):
        backend = backend_for(type_name)
        missing = [m for m in members if not hasattr(backend, m)]
        assert not missing, (type_name, missing)
