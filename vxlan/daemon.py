"""vxland's life cycle: start in flanneld's order, follow the registry, stop cleanly.

Order as flanneld's ``main.go:main``: network config -> external interface ->
lease -> device -> subnet.env -> watch leases and renew ours. flanneld creates its kernel
device before the lease so the VtepMAC can go into it; a TUN has no MAC, so vxland takes the
lease first (reusing the VtepMAC of a lease it already holds) and then makes the device.
The packet work is in ``dataplane``; this module only wires things together.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import fastpath
from vxlan import debug_http, heap, iptables, netconf, sdnotify, subnetenv, wire
from vxlan.capture import DEFAULT_SNAPLEN, CaptureHub, FileSink, Filter, TraceSink
from vxlan.config import ConfigError
from vxlan.dataplane import ENGINE_NICE, DataPlane, ThreadedDataPlane, open_udp_socket, probe_udp_offloads
from vxlan.health import MetricsSource, start_health_server
from vxlan.lease import Lease
from vxlan.peers import PeerAdded, PeerEvent, PeerRemoved, PeerSkipped, PeerTable
from vxlan.registry import Change, Deleted, OwnLeaseLost, Put, Registry, RegistryError, Reset
from vxlan.routes import CHECK_INTERVAL_S, PeerRoutes
from vxlan.tun import Tun
from vxlan.udpbackend import UdpCodec

log = logging.getLogger("vxland")
TASK_BACKOFF_MIN_S, TASK_BACKOFF_MAX_S = 1.0, 30.0
PEER_LINES_MAX = 32  # peer changes logged one line each; a larger batch is summed up
UNDERLAY_CHECK_S = 2.0  # how often the underlay address is looked for on its interface


def _quiet(*_args: object) -> None:
    """A peer line nobody will see (-v is off)."""


class StartupError(RuntimeError):
    """vxland cannot start; the message says why and what to do. Exit status 1."""


@dataclass(frozen=True)
class Options:
    subnet_file: Path = Path("/run/flannel/subnet.env")
    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str | None = None
    public_ip: str | None = None
    tun_name: str | None = None
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    ip_masq: bool = False
    masq_random_fully: bool = True  # unless --ip-masq-fully-random-disable
    iptables_resync_s: int = 5
    iptables_forward_rules: bool = True
    blackhole_route: bool = False
    offload: bool = True  # --no-offload turns TUN TSO/GRO and UDP GSO/GRO off
    engine_nice: int = ENGINE_NICE  # nice value of the compiled engine's two threads
    strict_source: bool = False  # drop decapsulated packets whose source is not the sender's subnet
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
        self.ready = False  # /readyz: lease, device, rules and subnet.env in place
        self.codec = None
        self.dataplane = None
        self.peers: PeerTable | None = None
        self.routes: PeerRoutes | None = None  # host-gw, or vxlan DirectRouting peers
        self.backend_type = ""
        self.metrics_source: MetricsSource | None = None
        self._iptables_tasks: list[asyncio.Task] = []  # resync loops, started with the rules
        # routes with a gateway into the Network found at start (a TUN backend): leftovers of a
        # host-gw or DirectRouting run, deleted as the peers they lead to come through the tunnel
        self._leftover_routes: dict = {}
        self.task_failures = 0  # unexpected exceptions in long-lived tasks (each restarted)
        self.exit_code = 0
        self.own: Lease | None = None  # our lease, once acquired
        self._underlay: tuple[netconf.Iface, str] | None = None  # the interface and the address we bind

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # SIGUSR1's default action ends a process: operators and log-rotation scripts send it
        # to daemons out of habit. It toggles a capture when there is one, else it is logged.
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)
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
            tasks = [asyncio.create_task(self._supervised("registry watch", self._follow_registry)),
                     asyncio.create_task(self._supervised("lease renewal", self.registry.keep_lease))]
            if self.routes is not None:
                tasks.append(asyncio.create_task(self._supervised("route check", self._check_routes)))
            if self._underlay is not None:
                tasks.append(asyncio.create_task(self._supervised("underlay watch", self._watch_underlay)))
            await self._stop.wait()
            log.info("shutting down")
            sdnotify.notify("STOPPING=1")
        finally:
            for task in tasks + self._iptables_tasks:  # the resync loops also when start-up failed
                task.cancel()
            await self._cleanup()
        return self.exit_code

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._cleanups.append(self.registry.close)
        if self.opts.healthz_port:
            # up before anything else, as flanneld's: /healthz answers and /readyz says 503
            # while we wait for etcd and the config
            await self._start_health()
        try:
            config = await self.registry.get_config()
        except ConfigError as exc:
            raise StartupError(f"invalid network config: {exc}") from None
        except RegistryError as exc:
            raise StartupError(str(exc)) from None
        self.backend_type = config.backend.type
        if config.backend_missing:
            log.warning('the network config has no "Backend": as flanneld\'s code does (config.go:parseBackendType; '
                        'its docs say vxlan), vxland runs flannel\'s udp backend on port %d. Add "Backend": '
                        '{"Type": "vxlan"} to every node\'s config for VXLAN', config.backend.port)
        try:
            iface = await asyncio.to_thread(netconf.find_iface, self.opts.iface, self.opts.public_ip,
                                            self.opts.iface_regex, self.opts.iface_can_reach)
        except netconf.NetconfError as exc:
            raise StartupError(str(exc)) from None
        public_ip = self.opts.public_ip or iface.address
        if iface.address:
            self._underlay = (iface, iface.address)
        if config.backend.type == "host-gw" and public_ip != iface.address:
            # hostgw.go:RegisterNetwork, word for word
            raise StartupError(f"your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
                               f"which is not supported by host-gw backend (PublicIP {public_ip}, "
                               f"{iface.name} {iface.address})")
        # A /8 of leases is ~400,000 objects made at once, all long-lived: no collection passes
        # over them while they load (0.15 s of 2 s), and once loaded they leave the collector's
        # sight for good (gc.freeze, at the end of start-up).
        gc.disable()
        try:
            own, others = await self.registry.acquire(config, public_ip, wire.random_vtep_mac())
        except RegistryError as exc:
            raise StartupError(str(exc)) from None
        finally:
            gc.enable()
        self.own = own
        mtu = config.tun_mtu(iface.mtu)
        self.peers = PeerTable(own.subnet, config.subnet_len,
                               None if config.backend.type == "udp" else config.backend.type)
        if config.backend.type == "vxlan":
            tun_name = await self._start_vxlan(loop, config, own, iface, public_ip, mtu)
            device = f"TUN {tun_name}"
            if config.backend.direct_routing:
                self.routes = PeerRoutes()
        elif config.backend.type == "udp":
            tun_name = await self._start_udp(loop, config, own, iface, public_ip, mtu)
            device = f"TUN {tun_name}"
        else:
            if self.opts.capture is not None or self.opts.trace_rate:
                raise StartupError("--capture and --trace need the vxlan backend (host-gw has no tunnel to watch)")
            if self.opts.strict_source:
                raise StartupError("--strict-source needs a tunnel (the vxlan or udp backend): with host-gw the "
                                   "kernel routes pod traffic itself (use rp_filter or iptables there)")
            self.routes = PeerRoutes(oif=iface.index)
            device = f"routes via {iface.name}"
        gc.disable()
        try:
            await self._apply(self.peers.reset(others))
        finally:
            gc.enable()
        del others  # a /8 of leases: the peer table holds them now
        heap.trim()  # and give back what reading them took (6 MB of 120 for a /8)

        if self.opts.blackhole_route:
            try:
                await asyncio.to_thread(netconf.add_blackhole, own.subnet)
            except netconf.NetconfError as exc:
                raise StartupError(str(exc)) from None
        await self._start_iptables(config.network, own.subnet)
        try:
            subnetenv.write(self.opts.subnet_file, config.network, own.subnet, mtu, self.opts.ip_masq)
        except OSError as exc:
            raise StartupError(f"cannot write --subnet-file {self.opts.subnet_file}: {exc.strerror}") from None

        mac = wire.mac_to_str(own.vtep_mac) if own.vtep_mac else "none"
        if self.metrics_source is not None:
            self.metrics_source.info.update({"backend": config.backend.type, "subnet": str(own.subnet),
                                             "registry": self.registry.name,
                                             "vni": str(config.backend.vni), "port": str(config.backend.port),
                                             "vtep_mac": mac,
                                             "strict_source": "1" if self.opts.strict_source else "0"})
        gc.freeze()  # what start-up made lives as long as the daemon
        self.ready = True
        sdnotify.notify(f"READY=1\nSTATUS=subnet {own.subnet}, {len(self.peers)} peers")
        strict = ", strict source" if self.opts.strict_source else ""
        if config.backend.type == "vxlan":
            log.info("vxland started: VNI %d, port %d, MTU %d, subnet %s, VtepMAC %s, %d peers "
                     "(underlay %s %s, public IP %s, %s, fastpath %s, offloads: %s, registry %s%s)",
                     config.backend.vni, config.backend.port, mtu, own.subnet, mac, len(self.peers), iface.name,
                     iface.address or public_ip, public_ip, device, fastpath.IMPLEMENTATION,
                     " ".join(self._offload_names) or "none", self.registry.name, strict)
        else:
            log.info("vxland started: backend %s, MTU %d, subnet %s, VtepMAC none, %d peers "
                     "(underlay %s %s, public IP %s, %s, registry %s%s)", config.backend.type, mtu, own.subnet,
                     len(self.peers), iface.name, iface.address, public_ip, device, self.registry.name, strict)

    async def _start_health(self) -> None:
        self.metrics_source = MetricsSource(
            dataplane=None, codec=None, registry=self._registry_metrics,
            info={"fastpath": fastpath.IMPLEMENTATION}, ready=lambda: self.ready, peers=self.peer_report,
            peer_count=lambda: len(self.peers) if self.peers is not None else 0)
        allow = list(self.opts.debug_allow)
        try:
            server = await start_health_server(self.metrics_source, self.opts.healthz_ip, self.opts.healthz_port,
                                               lambda srv: debug_http.add_routes(srv, lambda: self.hub, allow))
        except OSError as exc:
            raise StartupError(f"cannot serve health on {self.opts.healthz_ip}:"
                               f"{self.opts.healthz_port}: {exc.strerror}") from None
        self._cleanups.append(server.close)

    async def _start_vxlan(self, loop, config, own, iface, public_ip: str, tun_mtu: int) -> str:
        """The userspace data plane: codec, UDP socket, TUN, engine threads, capture."""
        assert own.vtep_mac is not None
        backend = config.backend
        if own.vni is not None and own.vni != backend.vni:
            log.warning("our lease says VNI %d but the config says %d; using the config's", own.vni, backend.vni)
        threaded = fastpath.Engine is not None
        codec_cls = fastpath.Engine if threaded else fastpath.Codec
        self.codec = codec_cls(backend.vni, own.vtep_mac, config.subnet_len, tun_mtu, backend.port,
                               strict_source=self.opts.strict_source)

        sock = self._open_socket(iface.address or public_ip, backend.port,
                                 "a kernel vxlan device or another vxland on this port?")
        tun = await self._open_tun(self.opts.tun_name or f"flannel.{backend.vni}", threaded and self.opts.offload,
                                   config, own, tun_mtu)
        offloads = self._offload_names = self._offloads(threaded, tun, sock)
        if threaded:
            self._run_dataplane(loop, ThreadedDataPlane(self.codec, tun.fd, sock, tun.vnet_hdr, "udp-gso" in offloads,
                                                        "udp-gro" in offloads, "tun-uso" in offloads,
                                                        self.opts.engine_nice))
        else:
            self._run_dataplane(loop, DataPlane(self.codec, tun.fd, sock))
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
        return tun.name

    async def _start_udp(self, loop, config, own, iface, public_ip: str, tun_mtu: int) -> str:
        """flannel's udp backend: TUN flannel0, bare IP packets over UDP (vxlan.udpbackend)."""
        if self.opts.capture is not None or self.opts.trace_rate:
            raise StartupError("--capture and --trace need the vxlan backend (the udp backend has no capture hook)")
        port = config.backend.port
        self.codec = UdpCodec(own.subnet.network_address, config.subnet_len, port,
                              strict_source=self.opts.strict_source)
        sock = self._open_socket(iface.address or public_ip, port, "flanneld's udp backend or another vxland "
                                 "on this port?")
        # "flannel%d", as flannel's ip.OpenTun: the kernel picks flannel0, flannel1 ...
        tun = await self._open_tun(self.opts.tun_name or "flannel%d", False, config, own, tun_mtu)
        self._run_dataplane(loop, DataPlane(self.codec, tun.fd, sock))
        return tun.name

    def _open_socket(self, bind_ip: str, port: int, hint: str):
        try:
            sock = open_udp_socket(bind_ip, port)
        except OSError as exc:
            raise StartupError(f"cannot bind UDP {bind_ip}:{port}: {exc.strerror} ({hint})") from None
        self._cleanups.append(sock.close)
        return sock

    async def _open_tun(self, name: str, offload: bool, config, own, mtu: int) -> Tun:
        """The TUN with MTU, our subnet's /32 and the Network route; all undone at exit."""
        try:
            tun = Tun(name, offload=offload)
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        self._cleanups.append(tun.close)
        # pyroute2's sync API must not run on the event-loop thread (it blocks on netlink)
        self._cleanups.append(lambda: asyncio.to_thread(netconf.remove_route, tun.name, config.network))
        try:
            await asyncio.to_thread(netconf.configure_tun, tun.name, own.subnet.network_address, mtu, config.network)
            self._leftover_routes = await asyncio.to_thread(netconf.gateway_routes, config.network)
        except (netconf.NetconfError, OSError) as exc:
            raise StartupError(str(exc)) from None
        return tun

    def _run_dataplane(self, loop, dataplane) -> None:
        self.dataplane = dataplane
        dataplane.on_failure = self._data_plane_failed
        dataplane.start(loop)
        self._cleanups.append(dataplane.stop)
        if self.metrics_source is not None:
            self.metrics_source.dataplane, self.metrics_source.codec = dataplane, self.codec

    async def _start_iptables(self, network, subnet) -> None:
        """--ip-masq and the forward rules, as flanneld's main.go sets them up (pkg/trafficmngr/iptables).

        Hosts without iptables (or without netfilter, as under gVisor) are among vxland's
        users: there the default forward rules are skipped with an error in the log, as
        flanneld does; an explicit --ip-masq that cannot be honoured stops start-up instead,
        so pods do not come up without the masquerading they were promised."""
        if not (self.opts.ip_masq or self.opts.iptables_forward_rules):
            return

        def failed(what: str, exc: Exception) -> None:
            if self.opts.ip_masq:
                raise StartupError(f"--ip-masq: {what}: {exc}") from None
            log.error("forward rules not installed (%s: %s); pass --iptables-forward-rules=false if this "
                      "host has no iptables", what, exc)

        try:
            ipt = await asyncio.to_thread(iptables.IPTables)
        except iptables.IPTablesError as exc:
            return failed("iptables", exc)
        rule_sets = []
        old = subnetenv.read_values(self.opts.subnet_file)
        prev_net, prev_subnet = old.get("FLANNEL_NETWORK"), subnetenv.previous_subnet(self.opts.subnet_file)
        await self._remove_legacy_rules(ipt, network, subnet, prev_net, prev_subnet)
        if self.opts.ip_masq:
            random_fully = self.opts.masq_random_fully and ipt.random_fully
            if prev_net and prev_subnet is not None and (prev_net != str(network) or prev_subnet != subnet):
                log.info("network or subnet (%s, %s) differ from the previous ones (%s, %s): removing the old "
                         "masquerade rules", network, subnet, prev_net, prev_subnet)
                try:
                    old_rules = iptables.masq_rules(ipaddress.IPv4Network(prev_net, strict=False), prev_subnet,
                                                    random_fully)
                    await asyncio.to_thread(ipt.delete, old_rules)
                except (ValueError, iptables.IPTablesError) as exc:
                    log.warning("could not remove the old masquerade rules: %s", exc)
            rule_sets.append(("masquerade", iptables.masq_rules(network, subnet, random_fully)))
        if self.opts.iptables_forward_rules:
            rule_sets.append(("forward", iptables.forward_rules(network)))
        for name, rules in rule_sets:
            try:
                await asyncio.to_thread(ipt.apply, rules, True)
            except iptables.IPTablesError as exc:
                failed(f"installing the {name} rules", exc)
                continue
            log.info("%s rules installed (%s)", name, iptables.flavour(ipt.version))
            self._iptables_tasks.append(asyncio.create_task(
                self._supervised(f"{name} rules resync", lambda ipt=ipt, name=name, rules=rules:
                                 self._resync_iptables(ipt, name, rules))))

    async def _remove_legacy_rules(self, ipt, network, subnet, prev_net: str | None, prev_subnet) -> None:
        """flanneld <= 0.19 put its rules straight into POSTROUTING and FORWARD (flannel v0.17.0
        network/iptables.go); on a host it ran on they stay, and beside vxland's chains they would
        apply twice. Those of the rule kinds vxland installs go, for this Network and subnet and
        for the previous ones in subnet.env."""
        pairs = {(network, subnet)}
        if prev_net and prev_subnet is not None:
            try:
                pairs.add((ipaddress.IPv4Network(prev_net, strict=False), prev_subnet))
            except ValueError:
                pass
        tables = ({"nat"} if self.opts.ip_masq else set()) | ({"filter"} if self.opts.iptables_forward_rules else set())
        legacy = [r for n, s in pairs for r in iptables.legacy_rules(n, s) if r.table in tables]
        try:
            found = await asyncio.to_thread(lambda: [r for r in legacy if ipt.exists(r)])
            if found:
                await asyncio.to_thread(ipt.delete, found)
                log.info("removed %d iptables rules flanneld <= 0.19 left in POSTROUTING/FORWARD; vxland's "
                         "FLANNEL-POSTRTG/FLANNEL-FWD chains replace them", len(found))
        except iptables.IPTablesError as exc:
            log.warning("could not remove the rules of an older flanneld: %s", exc)

    async def _resync_iptables(self, ipt, name: str, rules) -> None:
        """ensureIPTables: every --iptables-resync seconds, rebuild the set if a rule is missing."""
        while True:
            await asyncio.sleep(self.opts.iptables_resync_s)
            try:
                if not await asyncio.to_thread(ipt.all_exist, rules):
                    log.info("some %s rules are missing; deleting and recreating them", name)
                    await asyncio.to_thread(ipt.apply, rules)
            except iptables.IPTablesError as exc:
                log.error("failed to ensure the %s rules: %s", name, exc)

    async def _check_routes(self) -> None:
        assert self.routes is not None
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            await asyncio.to_thread(self.routes.check)

    def _data_plane_failed(self, why: str) -> None:
        """The TUN went away under us (someone ran ip link del), or an engine loop ended: no
        packet moves any more. Say so and exit 1, so systemd's Restart=on-failure (or the
        operator) starts vxland again with a fresh device, instead of a live process that
        forwards nothing behind a healthy /healthz."""
        if self._stop.is_set():
            return
        log.error("the data plane stopped (%s): was the TUN device deleted? Exiting with status 1 so that vxland "
                  "is started again", why)
        self.exit_code = 1
        self._stop.set()

    def peer_report(self) -> list[dict]:
        """/peers: every peer and how it is reached."""
        if self.peers is None:
            return []
        out = []
        for lease in self.peers.peers():
            direct = self.routes is not None and lease.subnet in self.routes
            out.append({"subnet": str(lease.subnet), "public_ip": lease.public_ip,
                        "backend_type": lease.backend_type,
                        "vtep_mac": wire.mac_to_str(lease.vtep_mac) if lease.vtep_mac else None,
                        "vni": lease.vni, "via": "route" if direct else "tunnel"})
        return out

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
        values["task_failures_total"] = float(self.task_failures)
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

    def _on_usr1(self) -> None:
        if self.opts.capture is not None and self.hub is not None:
            self._capture_toggle()
        else:
            log.warning("SIGUSR1 ignored: it stops and starts the --capture file, and vxland runs without "
                        "--capture")

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

    async def _apply(self, events: list[PeerEvent]) -> None:
        # One line per peer for what an operator reads (a few changes); a large snapshot (a
        # cluster of thousands, a start) is summed up, each line still there with -v.
        few = len(events) <= PEER_LINES_MAX
        # (a bound method is made anew at each access: compare "few", never "say is log.info")
        say = log.info if few else log.debug if log.isEnabledFor(logging.DEBUG) else _quiet
        # _quiet: a /8 at start, -v off: no line to format 65,536 times
        tunnelled: set = set()
        skipped = 0
        for event in events:
            lease = event.lease
            if isinstance(event, PeerAdded):
                if await self._add_peer(lease, say) and self._leftover_routes:
                    tunnelled.add(lease.subnet)
            elif isinstance(event, PeerRemoved):
                if self.codec is not None:
                    self.codec.remove_peer(lease.network_address)
                if self.routes is not None and lease.subnet in self.routes:
                    await asyncio.to_thread(self.routes.remove, lease.subnet)
                say("peer %s via %s removed", lease.subnet, lease.public_ip)
            elif isinstance(event, PeerSkipped):
                skipped += 1
                (log.warning if few else say)(
                    "lease %s (%s) ignored: %s", lease.key, lease.public_ip, event.reason)
        if len(events) > PEER_LINES_MAX:
            added = sum(isinstance(e, PeerAdded) for e in events)
            removed = sum(isinstance(e, PeerRemoved) for e in events)
            (log.warning if skipped else log.info)(
                "peer table: %d added, %d removed, %d leases ignored (other backends or prefix lengths); one line "
                "each with -v", added, removed, skipped)
        for subnet in tunnelled & self._leftover_routes.keys():  # no netlink call in the common case
            gateway = self._leftover_routes.pop(subnet)
            await asyncio.to_thread(netconf.delete_route, subnet, gateway)
            log.info("deleted route %s via %s left by an earlier host-gw or DirectRouting run: the peer is reached "
                     "through the tunnel now", subnet, gateway)

    async def _add_peer(self, lease, say: Callable[..., None] = log.info) -> bool:
        """Program a peer; True if it is reached through the tunnel."""
        subnet = lease.network_address
        direct = self.routes is not None and (
            self.codec is None  # host-gw: every peer is a route
            # DirectRouting, decided per event as vxlan_network.go does
            or await asyncio.to_thread(netconf.is_directly_connected, lease.public_ip))
        if direct:
            assert self.routes is not None
            if self.codec is not None:
                self.codec.remove_peer(subnet)
            try:
                await asyncio.to_thread(self.routes.add, lease.subnet, lease.public_ip)
            except netconf.NetconfError as exc:
                log.error("peer %s: %s", lease.subnet, exc)
                return False
            say("peer %s via %s (direct route, no tunnel)", lease.subnet, lease.public_ip)
            return False
        if self.routes is not None and lease.subnet in self.routes:
            await asyncio.to_thread(self.routes.remove, lease.subnet)
        assert self.codec is not None
        if self.backend_type == "udp":
            self.codec.set_peer(subnet, None, lease.public_ip)
            say("peer %s via %s (udp)", lease.subnet, lease.public_ip)
            return True
        assert lease.vtep_mac is not None
        self.codec.set_peer(subnet, lease.vtep_mac, lease.public_ip)
        if say is not _quiet:
            say("peer %s via %s (VtepMAC %s)", lease.subnet, lease.public_ip, wire.mac_to_str(lease.vtep_mac))
        return True

    async def _on_change(self, change: Change) -> None:
        assert self.peers is not None
        if isinstance(change, Reset):
            await self._apply(self.peers.reset(change.leases))
        elif isinstance(change, Put):
            await self._apply(self.peers.update(change.lease))
        elif isinstance(change, Deleted):
            await self._apply(self.peers.remove(change.subnet))
        elif isinstance(change, OwnLeaseLost):
            # flanneld: "Lease has been revoked. Shutting down daemon." and exit 0 (main.go).
            log.warning("%s Shutting down daemon.", change.reason)
            self._stop.set()

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run a long-lived task for as long as the daemon runs. An exception nobody expected is
        logged with its traceback, counted (vxland_task_failures_total) and the task starts
        again after a backoff (1 s, doubling to 30 s): forwarding goes on with what is known,
        and a dead task never hides behind a healthy /healthz."""
        backoff = TASK_BACKOFF_MIN_S
        while True:
            started = time.monotonic()
            try:
                await run()
                return  # done by itself (nothing to renew, say)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.task_failures += 1
                log.exception("the %s task failed; starting it again in %.0f s (forwarding goes on)", name, backoff)
            if time.monotonic() - started > TASK_BACKOFF_MAX_S:
                backoff = TASK_BACKOFF_MIN_S  # it had run well for a while: a fresh fault
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, TASK_BACKOFF_MAX_S)

    async def _watch_underlay(self) -> None:
        """The address this node binds and announces can be taken away under it (DHCP, an
        operator, a cloud agent). flanneld never notices and goes on announcing a dead address;
        vxland says so and exits 1 so that its service manager starts it again, which finds the
        interface's new address. With etcd, a lease naming the dead address is released first:
        the restart then takes the same subnet again (the previous one, from subnet.env; see
        allocator.choose_subnet) and the peers learn the new address from its lease."""
        assert self._underlay is not None
        iface, address = self._underlay
        while True:
            await asyncio.sleep(UNDERLAY_CHECK_S)
            present = await asyncio.to_thread(netconf.iface_addresses, iface.index)
            if present is not None and address in present:
                continue
            now = (f"interface {iface.name} is gone" if present is None
                   else f"{iface.name} has {', '.join(present) or 'no IPv4 address'} now")
            log.error("the underlay address %s is gone (%s): peers cannot reach this node at it; exiting so that "
                      "vxland is started again with the new address", address, now)
            if self.own is not None and self.own.public_ip == address:
                try:
                    if await asyncio.wait_for(self.registry.release(), 10.0):
                        log.info("our lease %s named %s: released, so that the restart takes the same subnet with "
                                 "the new address", self.own.key, address)
                except Exception as exc:  # etcd down, say: best effort, the exit follows all the same
                    log.warning("could not release our lease %s: %s", self.own.key, exc or type(exc).__name__)
            self.exit_code = 1
            self._stop.set()
            return

    async def _follow_registry(self) -> None:
        async for change in self.registry.changes():
            await self._on_change(change)

    async def _cleanup(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                result = cleanup()
                if asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, 1.0)
            except Exception as exc:  # a failed cleanup step must not skip the others
                log.warning("cleanup step failed: %s", exc)
        self._cleanups.clear()
