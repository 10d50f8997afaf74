"""What the two tunnel backends (vxlan, udp) share: the UDP socket, the TUN device with our
subnet's address and the Network route, the data plane and its failure, the peers' routes
(vxlan DirectRouting) and the routes a host-gw or DirectRouting run left behind."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket

from vxlan import netconf
from vxlan.backends import ROUTE, TUNNEL, Context, StartupError, Task, route_peer, unroute_peer
from vxlan.dataplane import adopt_socket, open_udp6_socket, open_udp_socket
from vxlan.lease import Lease
from vxlan.routes import PeerRoutes, check_forever
from vxlan.tun import Tun

log = logging.getLogger("vxland")
# an outer IPv6 header is 40 bytes, an IPv4 one 20: flannel-v6 gets MTU 1430 where flannel gets 1450
IPV6_EXTRA_OVERHEAD = 20


class TunnelBackend:
    name = ""
    device = ""

    def __init__(self) -> None:
        self.ctx: Context | None = None
        self.hub = None  # the vxlan backend's, with the compiled engine
        self.codec = None
        self.dataplane = None
        self._ctx: Context | None = None
        self._deferred = False  # a reload's bridge forwards until forward() (vxlan.handover)
        # what a reload hands to the next image, by vxlan.handover.NAMES: the TUN, the sockets
        self.handles: dict[str, object] = {}
        self.routes: PeerRoutes | None = None  # vxlan DirectRouting: peers on a directly connected subnet
        # routes with a gateway into the Network found at start: leftovers of a host-gw or
        # DirectRouting run, deleted as the peers they lead to come through the tunnel
        self.leftover_routes: dict[ipaddress.IPv4Network, str] = {}

    def precheck(self, opts, iface, public_ip: str) -> None:
        return None

    def open_socket(self, ctx: Context, port: int, hint: str):
        return self.tunnel_socket(ctx, "udp", ctx.iface.address or ctx.public_ip, port, hint)

    def tunnel_socket(self, ctx: Context, name: str, address: str, port: int, hint: str):
        """The tunnel socket of one underlay family (``name`` "udp": IPv4, "udp6": IPv6) bound
        to ``address``:``port``: the one a reload handed over, or a new one."""
        v6 = name == "udp6"
        fd = ctx.inherited.take(name)
        sock = adopt_socket(fd, socket.AF_INET6 if v6 else socket.AF_INET, address, port) if fd is not None else None
        if sock is None:
            try:
                sock = (open_udp6_socket if v6 else open_udp_socket)(address, port)
            except OSError as exc:
                where = f"[{address}]:{port}" if v6 else f"{address}:{port}"
                raise StartupError(f"cannot bind UDP {where}: {exc.strerror} ({hint})") from None
        ctx.cleanups.append(sock.close)
        self.handles[name] = sock
        return sock

    async def open_tun(self, ctx: Context, name: str, offload: bool) -> Tun:
        """The TUN with MTU, our subnet's /32 and the Network route; all undone at exit."""
        fd = ctx.inherited.take("tun")
        tun = Tun.adopt(fd, name, offload) if fd is not None else None
        try:
            tun = tun or Tun(name, offload=offload)
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        ctx.cleanups.append(tun.close)
        network = ctx.config.network if ctx.config.ipv4 else None  # (an IPv6-only node: no IPv4 side)
        # pyroute2's sync API must not run on the event-loop thread (it blocks on netlink)
        if network is not None:
            ctx.cleanups.append(lambda: asyncio.to_thread(netconf.remove_route, tun.name, network))
        try:
            await asyncio.to_thread(netconf.configure_tun, tun.name,
                                    ctx.own.subnet.network_address if network is not None else None, ctx.mtu, network)
            if network is not None:
                self.leftover_routes = await asyncio.to_thread(netconf.gateway_routes, network)
            if ctx.config.ipv6 is not None and ctx.own.v6 is not None:
                # one TUN for both families (docs/ipv6.md); the IPv6 route has the MTU a kernel
                # flannel-v6 device over the IPv6 underlay gets: the underlay's minus 70
                await asyncio.to_thread(netconf.configure_tun6, tun.name, ctx.own.v6.subnet.network_address,
                                        ctx.config.ipv6.network, ctx.mtu - IPV6_EXTRA_OVERHEAD)
        except (netconf.NetconfError, OSError) as exc:
            raise StartupError(str(exc)) from None
        self.device = f"TUN {tun.name}"
        self.handles["tun"] = tun
        return tun

    def run(self, ctx: Context, dataplane) -> None:
        self.dataplane = dataplane
        self._ctx = ctx
        dataplane.on_failure = ctx.on_failure
        ctx.cleanups.append(dataplane.stop)
        if ctx.metrics is not None:
            ctx.metrics.dataplane, ctx.metrics.codec = dataplane, self.codec
        if ctx.inherited.reload:
            # a reload: the bridge (if any) forwards with the old tables until ours are
            # programmed; without one, packets wait in the kernel's queues meanwhile
            self._deferred = True
            return
        dataplane.start(ctx.loop)

    def forward(self) -> None:
        """The peers are programmed: after a reload, the bridge stops and our loops take over
        (the kernel queues what arrives between the two: nothing is lost)."""
        if self._deferred and self._ctx is not None:
            self._deferred = False
            self._ctx.inherited.stop_bridge()
            self.dataplane.start(self._ctx.loop)

    def descriptors(self) -> dict[str, int]:
        return {name: h.fileno() for name, h in self.handles.items()}

    def reload_handover(self) -> tuple[dict[str, int], int | None]:
        """For a reload: stop forwarding, and return the descriptors the next image takes over
        (vxlan.handover) and the PID of the bridge that forwards until it does (with the
        compiled engine; the pure-Python data plane has none: its packets wait in the
        kernel's queues while the next image starts)."""
        fds = self.descriptors()
        engine = getattr(self.dataplane, "engine", None)
        if engine is None:
            self.dataplane.stop()
            return fds, None
        stop, go, done = os.eventfd(0), os.eventfd(0), os.eventfd(0)
        # the bridge keeps the tunnel GSO path's program attached to the TAP while it sends
        keep = getattr(self.handles.get("tap"), "bpf_fds", ())
        try:
            # forked while our loops still run (a fork of this process takes tens of ms), it
            # starts its own once ours have stopped: a gap of a millisecond or two
            pid = engine.bridge(stop, go, done, self.dataplane.engine_nice, keep)
        except OSError as exc:
            log.warning("%s: the pods wait in the kernel's queues while the new image starts", exc)
            pid = None
        self.dataplane.stop()
        os.eventfd_write(go, 1)
        os.close(go)
        if pid is None:
            os.close(stop)
            os.close(done)
            return fds, None
        fds["bridge-stop"], fds["bridge-done"] = stop, done
        return fds, pid

    async def tunnel_to(self, lease: Lease) -> None:
        """The peer goes through the tunnel: a route to it (ours, or a leftover) goes."""
        if self.routes is not None and lease.subnet in self.routes:
            await asyncio.to_thread(self.routes.remove, lease.subnet)
        if self.leftover_routes:  # no netlink call in the common case
            subnet = lease.subnet
            gateway = self.leftover_routes.pop(subnet, None)
            if gateway is not None:
                await asyncio.to_thread(netconf.delete_route, subnet, gateway)
                log.info("deleted route %s via %s left by an earlier host-gw or DirectRouting run: the peer is "
                         "reached through the tunnel now", subnet, gateway)

    async def route_to(self, lease: Lease) -> str:
        """The peer is reached by a route (DirectRouting), not through the tunnel."""
        assert self.routes is not None
        self.codec.remove_peer(lease.network_address)
        return await route_peer(self.routes, lease)

    async def remove_peer(self, lease: Lease) -> None:
        self.codec.remove_peer(lease.network_address)
        await unroute_peer(self.routes, lease)

    def via(self, subnet: ipaddress.IPv4Network) -> str:
        return ROUTE if self.routes is not None and subnet in self.routes else TUNNEL

    def tasks(self) -> list[Task]:
        routes = self.routes
        return [("route check", lambda: check_forever(routes))] if routes is not None else []

    def on_usr1(self) -> bool:
        return False

    def metrics(self) -> dict[str, float]:
        return {}
