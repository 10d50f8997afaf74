"""flannel's host-gw backend (``pkg/backend/hostgw/``, ``route_network.go``): no tunnel, a
route per peer via its PublicIP on the underlay interface, re-added every 10 s if it goes."""

from __future__ import annotations

import ipaddress
import logging

from vxlan.backends import ROUTE, Context, StartupError, Task, route_peer, unroute_peer
from vxlan.lease import Lease
from vxlan.routes import PeerRoutes, check_forever

log = logging.getLogger("vxland")


class HostGwBackend:
    name = peer_type = "host-gw"
    device = ""

    def __init__(self) -> None:
        self.ctx: Context | None = None
        self.hub = None  # no tunnel to watch
        self.routes: PeerRoutes | None = None

    def precheck(self, opts, iface, public_ip: str) -> None:
        if public_ip != iface.address:
            # hostgw.go:RegisterNetwork, word for word (before the lease, as there)
            raise StartupError(f"your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
                               f"which is not supported by host-gw backend (PublicIP {public_ip}, "
                               f"{iface.name} {iface.address})")
        if opts.capture is not None or opts.trace_rate:
            raise StartupError("--capture and --trace need the vxlan backend (host-gw has no tunnel to watch)")
        if opts.strict_source:
            raise StartupError("--strict-source needs a tunnel (the vxlan or udp backend): with host-gw the "
                               "kernel routes pod traffic itself (use rp_filter or iptables there)")

    async def start(self, ctx: Context) -> None:
        self.ctx = ctx
        self.routes = PeerRoutes(oif=ctx.iface.index)
        self.device = f"routes via {ctx.iface.name}"

    async def add_peer(self, lease: Lease) -> str:
        assert self.routes is not None
        return await route_peer(self.routes, lease)

    async def remove_peer(self, lease: Lease) -> None:
        await unroute_peer(self.routes, lease)

    def describe(self, lease: Lease, how: str) -> str:
        return "direct route, no tunnel"

    def via(self, subnet: ipaddress.IPv4Network) -> str:
        return ROUTE

    def tasks(self) -> list[Task]:
        routes = self.routes
        assert routes is not None
        return [("route check", lambda: check_forever(routes))]

    def started(self) -> tuple[str, str]:
        return f"backend {self.name}", ""

    def on_usr1(self) -> bool:
        return False

    def forward(self) -> None:
        return None  # the kernel forwards by the routes, across a reload too

    def descriptors(self) -> dict[str, int]:
        return {}

    def reload_handover(self) -> tuple[dict[str, int], None]:
        return {}, None  # the routes stay in the kernel; the next image replaces them as they are

    def metrics(self) -> dict[str, float]:
        return {}
