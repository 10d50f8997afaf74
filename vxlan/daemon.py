"""vxland's life cycle: start in flanneld's order, follow the registry, stop cleanly.

Order as flanneld's ``main.go:main`` (flannel-spec §7): network config -> external interface ->
device and lease -> (rules, subnet.env: later) -> watch leases. The packet work is in
``dataplane``; this module only wires things together and keeps the control loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
from dataclasses import dataclass
from pathlib import Path

import fastpath
from vxlan import netconf, wire
from vxlan.config import ConfigError
from vxlan.dataplane import DataPlane, open_udp_socket
from vxlan.health import MetricsSource, start_health_server
from vxlan.lease import Lease
from vxlan.peers import PeerAdded, PeerEvent, PeerRemoved, PeerSkipped, PeerTable
from vxlan.registry import Snapshot
from vxlan.registry.file import FileRegistry
from vxlan.tun import Tun

log = logging.getLogger("vxland")


class StartupError(RuntimeError):
    """vxland cannot start; the message says why and what to do. Exit status 1."""


@dataclass(frozen=True)
class Options:
    registry_file: Path
    iface: str | None = None
    public_ip: str | None = None
    tun_name: str | None = None
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0


def find_own_lease(snapshot: Snapshot, public_ip: str) -> Lease:
    """flannel's reuse rule (local_manager.go:tryAcquireLease): the lease with our PublicIP."""
    for lease in snapshot.leases.values():
        if lease.public_ip == public_ip:
            if lease.backend_type != "vxlan":
                raise StartupError(f"the lease {lease.key} for PublicIP {public_ip} has BackendType "
                                   f"{lease.backend_type!r}; vxland needs a vxlan lease")
            if not snapshot.config.contains_subnet(lease.subnet):
                raise StartupError(f"our lease {lease.key} is outside SubnetMin..SubnetMax or not "
                                   f"/{snapshot.config.subnet_len} (flannel's isSubnetConfigCompat)")
            return lease
    raise StartupError(f"no lease in the registry has PublicIP {public_ip}: add one for this node "
                       "under \"subnets\", or pass the right --public-ip")


class Daemon:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.registry = FileRegistry(opts.registry_file)
        self._stop = asyncio.Event()
        self._cleanups: list = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._start(loop)
            watch = asyncio.create_task(self._follow_registry())
            await self._stop.wait()
            log.info("signal received, shutting down")
            watch.cancel()
        finally:
            await self._cleanup()
        return 0

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            snapshot = await self.registry.start()
        except ConfigError as exc:
            raise StartupError(f"invalid registry file {exc}") from None
        config = snapshot.config
        self.config = config
        try:
            iface = await asyncio.to_thread(netconf.find_iface, self.opts.iface, self.opts.public_ip)
        except netconf.NetconfError as exc:
            raise StartupError(str(exc)) from None
        public_ip = self.opts.public_ip or iface.address
        own = find_own_lease(snapshot, public_ip)
        self.own = own
        vtep_mac = own.vtep_mac or wire.random_vtep_mac()
        backend = config.backend
        tun_mtu = config.tun_mtu(iface.mtu)
        if own.vni is not None and own.vni != backend.vni:
            log.warning("our lease says VNI %d but the config says %d; using the config's", own.vni, backend.vni)

        self.codec = fastpath.Codec(backend.vni, vtep_mac, config.subnet_len, tun_mtu, backend.port)
        self.peers = PeerTable(own.subnet, config.subnet_len)
        self._apply(self.peers.reset(snapshot.leases.values()))

        bind_ip = iface.address or public_ip
        try:
            sock = open_udp_socket(bind_ip, backend.port)
        except OSError as exc:
            raise StartupError(f"cannot bind UDP {bind_ip}:{backend.port}: {exc.strerror} "
                               "(a kernel vxlan device or another vxland on this port?)") from None
        self._cleanups.append(sock.close)

        tun_name = self.opts.tun_name or f"flannel.{backend.vni}"
        try:
            tun = Tun(tun_name)
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        self._cleanups.append(tun.close)
        self._cleanups.append(lambda: netconf.remove_route(tun_name, config.network))
        try:
            await asyncio.to_thread(netconf.configure_tun, tun_name, own.subnet.network_address,
                                    tun_mtu, config.network)
        except netconf.NetconfError as exc:
            raise StartupError(str(exc)) from None

        self.dataplane = DataPlane(self.codec, tun.fd, sock)
        self.dataplane.start(loop)
        self._cleanups.append(self.dataplane.stop)

        if self.opts.healthz_port:
            source = MetricsSource(
                dataplane=self.dataplane, codec=self.codec, lease_expiry_s=lambda: math.inf,
                info={"vni": str(backend.vni), "port": str(backend.port), "subnet": str(own.subnet),
                      "vtep_mac": wire.mac_to_str(vtep_mac), "fastpath": fastpath.IMPLEMENTATION})
            try:
                runner = await start_health_server(source, self.opts.healthz_ip, self.opts.healthz_port)
            except OSError as exc:
                raise StartupError(f"cannot serve health on {self.opts.healthz_ip}:"
                                   f"{self.opts.healthz_port}: {exc.strerror}") from None
            self._cleanups.append(runner.cleanup)

        log.info("vxland started: VNI %d, port %d, MTU %d, subnet %s, VtepMAC %s, %d peers "
                 "(underlay %s %s, public IP %s, TUN %s, fastpath %s)",
                 backend.vni, backend.port, tun_mtu, own.subnet, wire.mac_to_str(vtep_mac),
                 len(self.peers), iface.name, bind_ip, public_ip, tun_name, fastpath.IMPLEMENTATION)

    def _apply(self, events: list[PeerEvent]) -> None:
        for event in events:
            lease = event.lease
            subnet = int(lease.subnet.network_address)
            if isinstance(event, PeerAdded):
                assert lease.vtep_mac is not None
                self.codec.set_peer(subnet, lease.vtep_mac, lease.public_ip)
                log.info("peer %s via %s (VtepMAC %s)", lease.subnet, lease.public_ip,
                         wire.mac_to_str(lease.vtep_mac))
            elif isinstance(event, PeerRemoved):
                self.codec.remove_peer(subnet)
                log.info("peer %s via %s removed", lease.subnet, lease.public_ip)
            elif isinstance(event, PeerSkipped):
                log.warning("lease %s (%s) ignored: %s", lease.key, lease.public_ip, event.reason)

    def _check_unchanged(self, snapshot: Snapshot) -> None:
        """What a running node cannot change: its config and its own lease (flanneld reads
        both once at start). Say so instead of half-applying it."""
        if snapshot.config != self.config:
            log.warning("the network config in the registry changed; restart vxland to apply it")
        own = snapshot.leases.get(self.own.subnet)
        if own is None:
            log.warning("our own lease %s is gone from the registry; still forwarding with it", self.own.key)
        elif own != self.own:
            log.warning("our own lease %s changed; restart vxland to apply it", self.own.key)

    async def _follow_registry(self) -> None:
        async for snapshot in self.registry.watch():
            self._check_unchanged(snapshot)
            self._apply(self.peers.reset(snapshot.leases.values()))

    async def _cleanup(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 1.0)
            except Exception as exc:  # a failed cleanup step must not skip the others
                log.warning("cleanup step failed: %s", exc)
        self._cleanups.clear()
