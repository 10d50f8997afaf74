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
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vxlan.config import NetworkConfig
from vxlan.handover import Inherited
from vxlan.lease import Lease
from vxlan.peers import PeerAdded, PeerEvent, PeerRemoved, PeerSkipped
from vxlan.wire import mac_to_str

log = logging.getLogger("vxland")
PEER_LINES_MAX = 32  # peer changes logged one line each; a larger batch is summed up

if TYPE_CHECKING:
    from vxlan.capture import CaptureHub
    from vxlan.health import MetricsSource
    from vxlan.netconf import Iface
    from vxlan.options import Options
    from vxlan.routes import PeerRoutes


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
    inherited: Inherited = field(default_factory=Inherited)  # what a reload handed over (vxlan.handover)


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

    def forward(self) -> None:
        """The peers are programmed: forward from here on (after a reload the bridge that
        forwarded meanwhile stops first; vxlan.handover)."""
        ...

    def descriptors(self) -> dict[str, int]:
        """What a later image or start takes over (vxlan.handover.NAMES): the TUN, the sockets."""
        ...

    def reload_handover(self) -> tuple[dict[str, int], int | None]:
        """Stop forwarding for a reload; the descriptors the next image takes over by name, and
        the PID of the bridge that forwards until then (None: none)."""
        ...

    def on_usr1(self) -> bool:
        """SIGUSR1: toggle a capture; False if this backend has none running."""
        ...

    def metrics(self) -> dict[str, float]:
        """Backend state for /metrics (capture records lost ...)."""
        ...


async def apply_events(backend: Backend, events: list[PeerEvent]) -> None:
    """Peer events to the backend, logged: one line per peer for what an operator reads (a
    few changes); a large snapshot (a cluster of thousands, a start) is summed up, each line
    still there with -v."""
    few = len(events) <= PEER_LINES_MAX
    # (a bound method is made anew at each access: compare "few", never "say is log.info")
    say = log.info if few else log.debug if log.isEnabledFor(logging.DEBUG) else _quiet
    skipped = 0
    for event in events:
        lease = event.lease
        if isinstance(event, PeerAdded):
            how = await backend.add_peer(lease)
            if how != FAILED and say is not _quiet:  # _quiet: a /8 at start, -v off: nothing to format
                say("peer %s via %s (%s)", *_where(lease), backend.describe(lease, how))
        elif isinstance(event, PeerRemoved):
            await backend.remove_peer(lease)
            say("peer %s via %s removed", *_where(lease))
        elif isinstance(event, PeerSkipped):
            skipped += 1
            (log.warning if few else say)("lease %s (%s) ignored: %s", lease.key, lease.public_ip, event.reason)
    if not few:
        added = sum(isinstance(e, PeerAdded) for e in events)
        removed = sum(isinstance(e, PeerRemoved) for e in events)
        (log.warning if skipped else log.info)(
            "peer table: %d added, %d removed, %d leases ignored (other backends or prefix lengths); one line "
            "each with -v", added, removed, skipped)


def _where(lease: Lease) -> tuple:
    """A peer's subnet and address for the log: an IPv6-only lease's (0.0.0.0-0&...) are its IPv6 ones."""
    if lease.subnet_key == 0 and lease.v6 is not None:
        return lease.v6.subnet, lease.v6.public_ip
    return lease.subnet, lease.public_ip


async def route_peer(routes: PeerRoutes, lease: Lease, ipv6: bool = False) -> str:
    """A peer reached by a route (host-gw, DirectRouting; ``ipv6``: a dual-stack peer's IPv6
    subnet via its PublicIPv6): ROUTE, or FAILED with the reason logged."""
    from vxlan import netconf

    subnet, gateway = (lease.v6.subnet, lease.v6.public_ip) if ipv6 and lease.v6 else (lease.subnet, lease.public_ip)
    try:
        await asyncio.to_thread(routes.add, subnet, gateway)
    except netconf.NetconfError as exc:
        log.error("peer %s: %s", subnet, exc)
        return FAILED
    return ROUTE


async def unroute_peer(routes: PeerRoutes | None, lease: Lease, ipv6: bool = False) -> None:
    """Remove the peer's route (or, ``ipv6``, its IPv6 subnet's), if it has one."""
    subnet = lease.v6.subnet if ipv6 and lease.v6 else lease.subnet
    if routes is not None and subnet in routes:
        await asyncio.to_thread(routes.remove, subnet)


def peer_report(backend: Backend, peers: Iterable[Lease]) -> list[dict]:
    """/peers: every peer and how this backend reaches it."""
    return [{"subnet": str(lease.subnet), "public_ip": lease.public_ip, "backend_type": lease.backend_type,
             "vtep_mac": mac_to_str(lease.vtep_mac) if lease.vtep_mac else None,
             "vni": lease.vni, "via": backend.via(lease.subnet)}
            for lease in peers]


def _quiet(*_args: object) -> None:
    """A peer line nobody will see (-v is off)."""


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
