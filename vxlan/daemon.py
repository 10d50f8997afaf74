"""vxland's life cycle: start in flanneld's order, follow the registry, stop cleanly.

Order as flanneld's ``main.go:main`` (flannel-spec §7): network config -> external interface ->
lease -> device -> subnet.env -> watch leases and renew ours. flanneld creates its kernel
device before the lease so the VtepMAC can go into it; a TUN has no MAC, so vxland takes the
lease first (reusing the VtepMAC of a lease it already holds) and then makes the device.
The packet work is in ``dataplane``; this module only wires things together.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import fastpath
from vxlan import debug_http, netconf, subnetenv, wire
from vxlan.capture import DEFAULT_SNAPLEN, CaptureHub, FileSink, Filter, TraceSink
from vxlan.config import ConfigError
from vxlan.dataplane import DataPlane, ThreadedDataPlane, open_udp_socket, probe_udp_offloads
from vxlan.health import MetricsSource, start_health_server
from vxlan.peers import PeerAdded, PeerEvent, PeerRemoved, PeerSkipped, PeerTable
from vxlan.registry import AcquireError, Change, Deleted, OwnLeaseLost, Put, Registry, Reset
from vxlan.tun import Tun

log = logging.getLogger("vxland")


class StartupError(RuntimeError):
    """vxland cannot start; the message says why and what to do. Exit status 1."""


@dataclass(frozen=True)
class Options:
    subnet_file: Path = Path("/run/flannel/subnet.env")
    iface: str | None = None
    public_ip: str | None = None
    tun_name: str | None = None
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    offload: bool = True  # --no-offload turns TUN TSO/GRO and UDP GSO/GRO off
    capture: Path | None = None  # --capture: pcapng file, toggled by SIGUSR1
    capture_filter: str | None = None
    capture_count: int = 0
    capture_max_bytes: int = 0
    capture_snaplen: int = DEFAULT_SNAPLEN
    debug_allow: tuple = ()  # networks besides loopback that may use /debug/*
    trace_rate: int = 0  # --trace: lines per second to stderr (0: off)


class Daemon:
    def __init__(self, opts: Options, registry: Registry) -> None:
        self.opts = opts
        self.registry = registry
        self._stop = asyncio.Event()
        self._cleanups: list = []
        self.hub: CaptureHub | None = None
        self.capture_sink: FileSink | None = None
        self._capture_files = 0

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        tasks: list[asyncio.Task] = []
        try:
            start = asyncio.create_task(self._start(loop))
            stop = asyncio.create_task(self._stop.wait())
            await asyncio.wait([start, stop], return_when=asyncio.FIRST_COMPLETED)
            if not start.done():  # a signal while waiting for etcd or the config
                start.cancel()
                log.info("signal received before start-up finished, exiting")
                return 0
            stop.cancel()
            start.result()
            tasks = [asyncio.create_task(self._follow_registry()),
                     asyncio.create_task(self.registry.keep_lease())]
            await self._stop.wait()
            log.info("shutting down")
        finally:
            for task in tasks:
                task.cancel()
            await self._cleanup()
        return 0

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._cleanups.append(self.registry.close)
        try:
            config = await self.registry.get_config()
        except ConfigError as exc:
            raise StartupError(f"invalid network config: {exc}") from None
        try:
            iface = await asyncio.to_thread(netconf.find_iface, self.opts.iface, self.opts.public_ip)
        except netconf.NetconfError as exc:
            raise StartupError(str(exc)) from None
        public_ip = self.opts.public_ip or iface.address
        try:
            own, others = await self.registry.acquire(config, public_ip, wire.random_vtep_mac())
        except AcquireError as exc:
            raise StartupError(str(exc)) from None
        assert own.vtep_mac is not None
        backend = config.backend
        tun_mtu = config.tun_mtu(iface.mtu)
        if own.vni is not None and own.vni != backend.vni:
            log.warning("our lease says VNI %d but the config says %d; using the config's", own.vni, backend.vni)

        threaded = fastpath.Engine is not None
        codec_cls = fastpath.Engine if threaded else fastpath.Codec
        self.codec = codec_cls(backend.vni, own.vtep_mac, config.subnet_len, tun_mtu, backend.port)
        self.peers = PeerTable(own.subnet, config.subnet_len)
        self._apply(self.peers.reset(others))

        bind_ip = iface.address or public_ip
        try:
            sock = open_udp_socket(bind_ip, backend.port)
        except OSError as exc:
            raise StartupError(f"cannot bind UDP {bind_ip}:{backend.port}: {exc.strerror} "
                               "(a kernel vxlan device or another vxland on this port?)") from None
        self._cleanups.append(sock.close)

        tun_name = self.opts.tun_name or f"flannel.{backend.vni}"
        try:
            tun = Tun(tun_name, offload=threaded and self.opts.offload)
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        self._cleanups.append(tun.close)
        # pyroute2's sync API must not run on the event-loop thread (reference/dependencies.md)
        self._cleanups.append(lambda: asyncio.to_thread(netconf.remove_route, tun_name, config.network))
        try:
            await asyncio.to_thread(netconf.configure_tun, tun_name, own.subnet.network_address,
                                    tun_mtu, config.network)
        except netconf.NetconfError as exc:
            raise StartupError(str(exc)) from None

        offloads = self._offloads(threaded, tun, sock)
        if threaded:
            self.dataplane = ThreadedDataPlane(self.codec, tun.fd, sock, tun.vnet_hdr, "udp-gso" in offloads,
                                               "udp-gro" in offloads, "tun-uso" in offloads)
        else:
            self.dataplane = DataPlane(self.codec, tun.fd, sock)
        self.dataplane.start(loop)
        self._cleanups.append(self.dataplane.stop)
        if threaded:
            self.hub = CaptureHub(self.codec, self.opts.capture_snaplen)
            self._cleanups.append(self.hub.close)
        if self.opts.trace_rate:
            if self.hub is None:
                raise StartupError("--trace needs the compiled data plane")
            self.hub.add(TraceSink(sys.stderr, self.opts.trace_rate, Filter.parse(self.opts.capture_filter)))
        if self.opts.capture is not None:
            if self.hub is None:
                raise StartupError("--capture needs the compiled data plane (VXLAN_PURE_PYTHON is set or the "
                                   "extension is missing)")
            try:
                self._capture_start()
            except (OSError, ValueError) as exc:
                raise StartupError(f"--capture {self.opts.capture}: {getattr(exc, 'strerror', None) or exc}") from None
            loop.add_signal_handler(signal.SIGUSR1, self._capture_toggle)

        try:
            subnetenv.write(self.opts.subnet_file, config.network, own.subnet, tun_mtu)
        except OSError as exc:
            raise StartupError(f"cannot write --subnet-file {self.opts.subnet_file}: {exc.strerror}") from None

        if self.opts.healthz_port:
            source = MetricsSource(
                dataplane=self.dataplane, codec=self.codec, registry=self._registry_metrics,
                info={"vni": str(backend.vni), "port": str(backend.port), "subnet": str(own.subnet),
                      "vtep_mac": wire.mac_to_str(own.vtep_mac), "fastpath": fastpath.IMPLEMENTATION})
            hub, allow = self.hub, list(self.opts.debug_allow)
            try:
                runner = await start_health_server(source, self.opts.healthz_ip, self.opts.healthz_port,
                                                   lambda app: debug_http.add_routes(app, hub, allow))
            except OSError as exc:
                raise StartupError(f"cannot serve health on {self.opts.healthz_ip}:"
                                   f"{self.opts.healthz_port}: {exc.strerror}") from None
            self._cleanups.append(runner.cleanup)

        log.info("vxland started: VNI %d, port %d, MTU %d, subnet %s, VtepMAC %s, %d peers "
                 "(underlay %s %s, public IP %s, TUN %s, fastpath %s, offloads: %s)",
                 backend.vni, backend.port, tun_mtu, own.subnet, wire.mac_to_str(own.vtep_mac),
                 len(self.peers), iface.name, bind_ip, public_ip, tun_name, fastpath.IMPLEMENTATION,
                 " ".join(offloads) or "none")

    def _offloads(self, threaded: bool, tun: Tun, sock) -> list[str]:
        """Probe what the kernel offers; log what is off and why (wireguard-go's habit)."""
        if not threaded:
            return []
        if not self.opts.offload:
            log.info("offloads off (--no-offload)")
            return []
        if tun.offload_error:
            log.warning("TUN offloads off: %s", tun.offload_error)
        elif tun.uso_error:
            log.info("%s: UDP super-packets are not used on the TUN", tun.uso_error)
        gso, gro, reasons = probe_udp_offloads(sock)
        for reason in reasons:
            log.warning("%s", reason)
        names = (["tun-tso-gro"] if tun.vnet_hdr else []) + (["tun-uso"] if tun.uso else [])
        return names + (["udp-gso"] if gso else []) + (["udp-gro"] if gro else [])

    def _registry_metrics(self) -> dict[str, float]:
        values = self.registry.metrics()
        if self.hub is not None:
            values["capture_lost_total"] = float(self.hub.lost)
        return values

    def _capture_start(self) -> None:
        """Open the next capture file: --capture's path first, then PATH.1, PATH.2 ..."""
        assert self.hub is not None and self.opts.capture is not None
        path = self.opts.capture
        if self._capture_files:
            path = path.with_name(f"{path.name}.c{self._capture_files}")
        self.capture_sink = FileSink(path, self.opts.capture_snaplen, Filter.parse(self.opts.capture_filter),
                                     self.opts.capture_count, self.opts.capture_max_bytes)
        self._capture_files += 1
        self.hub.add(self.capture_sink)
        log.info("capture on: writing %s", path)

    def _capture_toggle(self) -> None:
        """SIGUSR1: stop a running file capture (the file is complete), or start a new one."""
        assert self.hub is not None
        if self.capture_sink is not None and not self.capture_sink.done:
            self.hub.remove(self.capture_sink)
            self.capture_sink.close()
            log.info("capture off: %d packets in %s", self.capture_sink.packets,
                     ", ".join(map(str, self.capture_sink.files)))
            self.capture_sink = None
            return
        try:
            self._capture_start()
        except OSError as exc:
            log.error("capture: cannot open %s: %s", self.opts.capture, exc.strerror)

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

    def _on_change(self, change: Change) -> None:
        if isinstance(change, Reset):
            self._apply(self.peers.reset(change.leases))
        elif isinstance(change, Put):
            self._apply(self.peers.update(change.lease))
        elif isinstance(change, Deleted):
            self._apply(self.peers.remove(change.subnet))
        elif isinstance(change, OwnLeaseLost):
            # flanneld: "Lease has been revoked. Shutting down daemon." and exit 0 (main.go).
            log.warning("%s Shutting down daemon.", change.reason)
            self._stop.set()

    async def _follow_registry(self) -> None:
        async for change in self.registry.changes():
            self._on_change(change)

    async def _cleanup(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 1.0)
            except Exception as exc:  # a failed cleanup step must not skip the others
                log.warning("cleanup step failed: %s", exc)
        self._cleanups.clear()
