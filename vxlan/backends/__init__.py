"""Backends as units, as flannel's ``pkg/backend/<name>/``: ``vxlan`` (the userspace VXLAN data
plane), ``udp`` (flannel's udp proxy format) and ``host-gw`` (routes only), each behind the
``Backend`` interface and looked up by the config's ``Backend.Type`` (``backend_for``).

The daemon gives a backend a ``Context`` (what start-up found: options, config, our lease,
the underlay interface, the MTU, where clean-ups go) and then peer events one at a time; it
holds no backend-specific branch.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vxlan.config import NetworkConfig
from vxlan.lease import Lease

if TYPE_CHECKING:
    from vxlan.capture import CaptureHub
    from vxlan.health import MetricsSource
    from vxlan.netconf import Iface
    from vxlan.options import Options


class StartupError(RuntimeError):
    """vxland cannot start; the message says why and what to do. Exit status 1."""


# add_peer's answers: how the peer is reached now
TUNNEL, ROUTE, FAILED = "tunnel", "route", ""


@dataclass
class Context:
    opts: Options
    config: NetworkConfig
    own: Lease
    iface: Iface
    public_ip: str
    mtu: int  # of the overlay device
    loop: asyncio.AbstractEventLoop
    cleanups: list = field(default_factory=list)  # run in reverse at exit (callables, maybe async)
    on_failure: Callable[[str], None] = lambda why: None  # the data plane stopped for good
    metrics: MetricsSource | None = None  # /metrics, when --healthz-port is set


Task = tuple[str, Callable[[], Awaitable[None]]]


class Backend(Protocol):
    name: str
    device: str  # what carries the overlay, for the start-up line ("TUN flannel.1", "routes via eth0")
    # the BackendType of the leases that are peers (vxlan_network.go and route_network.go
    # compare it exactly); None: every lease (udp_network_amd64.go)
    peer_type: str | None
    hub: CaptureHub | None  # packet capture (/debug/capture, --capture, --trace); None: none here

    def precheck(self, opts: Options, iface: Iface, public_ip: str) -> None:
        """Before a lease is taken: StartupError if this backend cannot run so."""
        ...

    async def start(self, ctx: Context) -> None:
        """Devices, sockets, threads; StartupError if this backend cannot run with these options."""
        ...

    async def add_peer(self, lease: Lease) -> str:
        """Program a peer (new or changed lease): TUNNEL, ROUTE, or FAILED (logged)."""
        ...

    async def remove_peer(self, lease: Lease) -> None: ...

    def describe(self, lease: Lease, how: str) -> str:
        """How a peer is reached, for its log line ("VtepMAC ...", "direct route, no tunnel")."""
        ...

    def via(self, subnet: ipaddress.IPv4Network) -> str:
        """"tunnel" or "route", for /peers."""
        ...

    def tasks(self) -> list[Task]:
        """Long-lived tasks the daemon runs supervised (route checks)."""
        ...

    def started(self) -> tuple[str, str]:
        """The start-up line's backend part and its detail part."""
        ...

    def on_usr1(self) -> bool:
        """SIGUSR1: toggle a capture; False if this backend has none running."""
        ...

    def metrics(self) -> dict[str, float]:
        """Backend state for /metrics (capture records lost ...)."""
        ...


def backend_for(type_name: str) -> Backend:
    """The backend for ``Backend.Type`` (config.py has refused unknown types already)."""
    if type_name == "vxlan":
        from vxlan.backends.vxlan import VxlanBackend

        return VxlanBackend()
    if type_name == "udp":
        from vxlan.backends.udp import UdpBackend

        return UdpBackend()
    if type_name == "host-gw":
        from vxlan.backends.hostgw import HostGwBackend

        return HostGwBackend()
    raise StartupError(f"backend {type_name!r} is not supported")
