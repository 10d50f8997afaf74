"""vxland's life cycle: start in flanneld's order, follow the registry, stop cleanly.

Order as flanneld's ``main.go:main``: network config -> external interface ->
lease -> device -> subnet.env -> watch leases and renew ours. flanneld creates its kernel
device before the lease so the VtepMAC can go into it; a TUN has no MAC, so vxland takes the
lease first (reusing the VtepMAC of a lease it already holds) and then makes the device.
The packet work is in ``dataplane``; this module only wires things together.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import signal
import sys
import time

import fastpath
from vxlan import debug_http, handover, heap, hostrules, netconf, sdnotify, subnetenv, underlay, wire
from vxlan.backends import Backend, Context, StartupError, apply_events, backend_for, peer_report
from vxlan.config import ConfigError, check_supported
from vxlan.health import MetricsSource, start_health_server
from vxlan.lease import Lease
from vxlan.options import Options
from vxlan.peers import PeerEvent, PeerTable
from vxlan.registry import Change, OwnLeaseLost, Registry, RegistryError, peer_events
from vxlan.supervise import Supervisor

log = logging.getLogger("vxland")


__all__ = ["Daemon", "Options", "StartupError"]
RELOAD_AT_ENV = "VXLAND_RELOAD_AT"  # when the previous image re-executed (time.time()), for the log
PREFLIGHT_TIMEOUT_S = 30.0


async def preflight(argv: list[str]) -> str | None:
    """Run ``argv --check`` (the new code, the flags, the network config); why a reload would
    fail, or None."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, "--check", stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return f"cannot run {argv[0]}: {exc.strerror}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), PREFLIGHT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"{' '.join(argv)} --check did not finish within {PREFLIGHT_TIMEOUT_S:.0f} s"
    if proc.returncode == 0:
        return None
    lines = out.decode(errors="replace").strip().splitlines()
    return f"the new code with these arguments fails ({lines[-1] if lines else f'exit {proc.returncode}'})"


class Daemon:
    def __init__(self, opts: Options, registry: Registry) -> None:
        self.opts = opts
        self.registry = registry
        self._stop = asyncio.Event()
        self._cleanups: list = []
        self.ready = False  # /readyz: lease, device, rules and subnet.env in place
        self.backend: Backend | None = None
        self.peers: PeerTable | None = None
        self.metrics_source: MetricsSource | None = None
        self.tasks = Supervisor()  # long-lived tasks, restarted when they fail (vxlan.supervise)
        self.exit_code = 0
        self.own: Lease | None = None  # our lease, once acquired
        self._underlay: tuple[netconf.Iface, str] | None = None  # the interface and the address we bind
        # what the image before us handed over, if this start is a reload (vxlan.handover)
        self.inherited = handover.Inherited.from_env()
        self._reload_started = float(os.environ.pop(RELOAD_AT_ENV, "0") or 0) if self.inherited.reload else 0.0
        self._reloading: asyncio.Task | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        # SIGUSR1's default action ends a process: operators and log-rotation scripts send it
        # to daemons out of habit. It toggles a capture when there is one, else it is logged.
        loop.add_signal_handler(signal.SIGUSR1, self._on_usr1)
        # SIGHUP's default action ends a process, and with it the TUN: a reload-by-HUP habit
        # would cut the host off. It reloads in place instead (vxlan.handover).
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
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
            self.tasks.start("registry watch", self._follow_registry)
            self.tasks.start("lease renewal", self.registry.keep_lease)
            assert self.backend is not None
            for name, task in self.backend.tasks():
                self.tasks.start(name, task)
            if self._underlay is not None:
                self.tasks.start("underlay watch", self._watch_underlay)
            await self._stop.wait()
            log.info("shutting down")
            sdnotify.notify("STOPPING=1")
        finally:
            self.tasks.cancel_all()  # the rules resync loops too, also when start-up failed
            await self._cleanup()
        return self.exit_code

    async def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        """flanneld's order: config, interface, lease, backend, peers, rules, subnet.env, ready."""
        self._cleanups.append(self.registry.close)
        if self.opts.healthz_port:
            # up before anything else, as flanneld's: /healthz answers and /readyz says 503
            # while we wait for etcd and the config
            await self._start_health()
        config = await self._config()
        try:
            iface = await asyncio.to_thread(netconf.find_iface, self.opts.iface, self.opts.public_ip,
                                            self.opts.iface_regex, self.opts.iface_can_reach, not config.ipv4)
        except netconf.NetconfError as exc:
            raise StartupError(str(exc)) from None
        # an IPv6-only node's lease says PublicIP 0.0.0.0 (newSubnetAttrs sets none) and its
        # IPv4 address, if it has one, is nobody's business
        public_ip = (self.opts.public_ip or iface.address) if config.ipv4 else "0.0.0.0"
        if iface.address or not config.ipv4:
            self._underlay = (iface, iface.address if config.ipv4 else None)
        self.backend = backend = backend_for(config.backend.type)
        backend.precheck(self.opts, iface, public_ip)
        v6 = (await self._public_ipv6(iface), wire.random_vtep_mac()) if config.ipv6 is not None else None
        own, others = await self._acquire(config, public_ip, v6)
        mtu = config.tun_mtu(iface.mtu)
        self.peers = PeerTable(own.subnet, config.subnet_len, backend.peer_type,
                               own.v6.subnet if own.v6 is not None else None)
        await backend.start(Context(self.opts, config, own, iface, public_ip, mtu, loop, self._cleanups,
                                    self._data_plane_failed, self.metrics_source, self.inherited))
        gc.disable()  # see _acquire
        try:
            await self._apply(self.peers.reset(others))
        finally:
            gc.enable()
        backend.forward()  # (after a reload: the bridge stops, our loops take over)
        handover.forwarding()
        self.inherited.close_rest()
        if self._reload_started:
            log.info("reload: the new code forwards %.0f ms after the old one re-executed (%s)",
                     (time.time() - self._reload_started) * 1000,
                     "the bridge forwarded meanwhile" if self.inherited.bridged else "packets waited in the kernel")
        del others  # a /8 of leases: the peer table holds them now
        heap.trim()  # and give back what reading them took (6 MB of 120 for a /8)
        await self._program_host(config, own, mtu)
        gc.freeze()  # what start-up made lives as long as the daemon
        self.ready = True
        subnet = own.subnet if config.ipv4 else own.v6.subnet if own.v6 is not None else "none"
        # under systemd with FileDescriptorStoreMax=: the TUN and the sockets outlive a crash or
        # a systemctl restart in its store, and come back in LISTEN_FDS (vxlan.handover)
        sdnotify.store_fds(backend.descriptors())
        sdnotify.notify(f"READY=1\nSTATUS=subnet {subnet}, {len(self.peers)} peers")
        self._say_started(config, own, iface, public_ip, mtu)

    async def _config(self):
        try:
            config = await self.registry.get_config()
        except ConfigError as exc:
            raise StartupError(f"invalid network config: {exc}") from None
        except RegistryError as exc:
            raise StartupError(str(exc)) from None
        try:
            check_supported(config)
        except ConfigError as exc:
            raise StartupError(f"network config not supported: {exc}") from None
        if config.backend_missing:
            log.warning('the network config has no "Backend": as flanneld\'s code does (config.go:parseBackendType; '
                        'its docs say vxlan), vxland runs flannel\'s udp backend on port %d. Add "Backend": '
                        '{"Type": "vxlan"} to every node\'s config for VXLAN', config.backend.port)
        return config

    async def _public_ipv6(self, iface) -> str:
        """A dual-stack node's IPv6 underlay address: --public-ipv6, else the interface's first
        global IPv6 address (flannel's LookupExtIface)."""
        if self.opts.public_ipv6:
            return self.opts.public_ipv6
        address = await asyncio.to_thread(netconf.iface_ipv6, iface.index)
        if address is None:  # flannel's text (pkg/ipmatch/match.go), then what to do
            raise StartupError(f"failed to find IPv6 address for interface {iface.name}: EnableIPv6 needs one "
                               "(give it a global IPv6 address, or pass --public-ipv6)")
        return address

    async def _acquire(self, config, public_ip: str, v6=None) -> tuple[Lease, list[Lease]]:
        # A /8 of leases is ~400,000 objects made at once, all long-lived: no collection passes
        # over them while they load (0.15 s of 2 s), and once loaded they leave the collector's
        # sight for good (gc.freeze, at the end of start-up).
        gc.disable()
        try:
            own, others = await self.registry.acquire(config, public_ip, wire.random_vtep_mac(), v6)
        except RegistryError as exc:
            raise StartupError(str(exc)) from None
        finally:
            gc.enable()
        self.own = own
        return own, others

    async def _program_host(self, config, own: Lease, mtu: int) -> None:
        """The blackhole route, the iptables rules, subnet.env."""
        if self.opts.blackhole_route:
            # each family's subnet, as main.go (AddBlackholeV4Route with EnableIPv4, V6 with EnableIPv6)
            subnets = ([own.subnet] if config.ipv4 else []) + \
                ([own.v6.subnet] if config.ipv6 is not None and own.v6 is not None else [])
            try:
                for subnet in subnets:
                    await asyncio.to_thread(netconf.add_blackhole, subnet)
            except netconf.NetconfError as exc:
                raise StartupError(str(exc)) from None
        # --ip-masq and the forward rules (vxlan.hostrules); their resync loops run supervised
        ipv6 = (config.ipv6.network, own.v6.subnet) if config.ipv6 is not None and own.v6 is not None else None
        network, subnet = (config.network, own.subnet) if config.ipv4 else (None, None)
        for name, resync in await hostrules.install(self.opts, network, subnet, config.enable_nftables, ipv6):
            self.tasks.start(f"{name} rules resync", resync)
        try:
            subnetenv.write(self.opts.subnet_file, network, subnet, mtu, self.opts.ip_masq, ipv6)
        except OSError as exc:
            raise StartupError(f"cannot write --subnet-file {self.opts.subnet_file}: {exc.strerror}") from None

    def _say_started(self, config, own: Lease, iface, public_ip: str, mtu: int) -> None:
        assert self.backend is not None and self.peers is not None
        mac = wire.mac_to_str(own.vtep_mac) if own.vtep_mac else "none"
        strict = ", strict source" if self.opts.strict_source else ""
        if self.metrics_source is not None:
            self.metrics_source.info.update({"backend": config.backend.type,
                                             "subnet": str(own.subnet) if config.ipv4 else "none",
                                             "registry": self.registry.name,
                                             "vni": str(config.backend.vni), "port": str(config.backend.port),
                                             "vtep_mac": mac, "strict_source": "1" if strict else "0"})
        head, detail = self.backend.started()
        v6 = ""
        if own.v6 is not None:
            v6 = (f", IPv6 subnet {own.v6.subnet} VtepMAC {wire.mac_to_str(own.v6.vtep_mac or b'') or 'none'} "
                  f"public IPv6 {own.v6.public_ip}")
        if not config.ipv4:  # an IPv6-only node: its IPv4 address (if any) plays no part
            public_ip = "none"
            iface = dataclasses.replace(iface, address=own.v6.public_ip if own.v6 is not None else "")
        log.info("vxland started: %s, MTU %d, subnet %s, VtepMAC %s%s, %d peers (underlay %s %s, public IP %s, %s%s, "
                 "registry %s%s)", head, mtu, own.subnet if config.ipv4 else "none (IPv6-only)", mac, v6,
                 len(self.peers), iface.name,
                 iface.address or public_ip, public_ip, self.backend.device, detail, self.registry.name, strict)

    async def _start_health(self) -> None:
        self.metrics_source = MetricsSource(
            dataplane=None, codec=None, registry=self._registry_metrics,
            info={"fastpath": fastpath.IMPLEMENTATION}, ready=lambda: self.ready, peers=self.peer_report,
            peer_count=lambda: len(self.peers) if self.peers is not None else 0)
        hub = lambda: self.backend.hub if self.backend is not None else None  # noqa: E731 (once it runs)
        try:
            server = await start_health_server(self.metrics_source, self.opts.healthz_ip, self.opts.healthz_port,
                                               lambda srv: debug_http.add_routes(srv, hub, list(self.opts.debug_allow)))
        except OSError as exc:
            raise StartupError(f"cannot serve health on {self.opts.healthz_ip}:"
                               f"{self.opts.healthz_port}: {exc.strerror}") from None
        self._cleanups.append(server.close)

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
        return [] if self.peers is None or self.backend is None else peer_report(self.backend, self.peers.peers())

    def _registry_metrics(self) -> dict[str, float]:
        values = self.registry.metrics()
        values["task_failures_total"] = float(self.tasks.failures)
        if self.backend is not None:
            values.update(self.backend.metrics())
        return values

    def _on_hup(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            log.info("SIGHUP: a reload is under way already")
            return
        self._reloading = asyncio.create_task(self._reload())

    async def _reload(self) -> None:
        """Re-execute this vxland with the same arguments, keeping the PID, the TUN and the
        sockets (vxlan.handover); first check that the new code starts with them (``--check``),
        and carry on as we are if not."""
        if not self.ready or self.backend is None:
            log.warning("SIGHUP before start-up finished: no reload")
            return
        argv = [sys.executable, *sys.orig_argv[1:]]
        why = await preflight(argv)
        if why is not None:
            log.error("reload refused, this vxland carries on: %s", why)
            return
        if self._stop.is_set():  # a SIGTERM while the check ran: that wins
            return
        log.info("reloading: re-executing %s; the TUN and the sockets go across", " ".join(argv))
        sdnotify.notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")  # READY=1 follows
        fds, bridge = self.backend.reload_handover()
        for fd in fds.values():
            os.set_inheritable(fd, True)
        env = {**os.environ, handover.FDS_ENV: handover.encode(fds), RELOAD_AT_ENV: repr(time.time())}
        if bridge is not None:
            env[handover.BRIDGE_ENV] = str(bridge)
        for h in logging.getLogger().handlers:
            h.flush()
        try:
            os.execve(sys.executable, argv, env)  # on the event loop's thread: the bridge's PDEATHSIG follows it
        except OSError as exc:  # (the preflight ran it a moment ago)
            log.error("reload failed: cannot execute %s: %s; exiting", sys.executable, exc.strerror)
            self.exit_code = 1
            self._stop.set()

    def _on_usr1(self) -> None:
        if self.backend is None or not self.backend.on_usr1():
            log.warning("SIGUSR1 ignored: it stops and starts the --capture file, and vxland runs without "
                        "--capture")

    async def _apply(self, events: list[PeerEvent]) -> None:
        assert self.backend is not None
        await apply_events(self.backend, events)

    async def _on_change(self, change: Change) -> None:
        assert self.peers is not None
        events = peer_events(self.peers, change)
        if events is not None:
            await self._apply(events)
        elif isinstance(change, OwnLeaseLost):
            # flanneld: "Lease has been revoked. Shutting down daemon." and exit 0 (main.go).
            log.warning("%s Shutting down daemon.", change.reason)
            self._stop.set()

    async def _watch_underlay(self) -> None:
        """Exit 1 when the underlay address is gone (vxlan.underlay says why and releases the lease)."""
        assert self._underlay is not None
        v6 = self.own.v6 if self.own is not None else None
        await underlay.watch(*self._underlay, self.own, self.registry, v6.public_ip if v6 is not None else None)
        self.exit_code = 1
        self._stop.set()

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
