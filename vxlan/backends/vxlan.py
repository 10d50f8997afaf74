"""The vxlan backend: flannel's ``pkg/backend/vxlan/``, with the device in user space. A codec
(the compiled engine, or the pure-Python reference) between a TUN and a UDP socket, the kernel
offloads it can use, packet capture and ``--trace``; with ``DirectRouting``, peers on a directly
connected subnet get a route instead (``vxlan_network.go:handleSubnetEvents``)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import fastpath
from vxlan import netconf, wire
from vxlan.backends import TUNNEL, Context, StartupError, Task, route_peer, unroute_peer
from vxlan.backends.tunnel import TunnelBackend
from vxlan.capture import CaptureHub, FileSink, Filter, TraceSink
from vxlan.dataplane import (
    DataPlane,
    ThreadedDataPlane,
    adopt_socket,
    open_packet_socket,
    open_udp6_socket,
    open_udp_socket,
    probe_udp_offloads,
    receive_again,
    stop_receiving,
)
from vxlan.lease import Lease
from vxlan.routes import PeerRoutes
from vxlan.tun import Tun
from vxlan.tunnel_tx import TunnelTx, TunnelTxError

log = logging.getLogger("vxland")
TUNNEL_WATCH_S = 5.0  # how often the tunnel GSO path's state is looked at


class VxlanBackend(TunnelBackend):
    name = peer_type = "vxlan"

    def __init__(self) -> None:
        super().__init__()
        self.hub: CaptureHub | None = None  # set by start() with the compiled engine
        self.capture_sink: FileSink | None = None
        self.capture_files = 0
        self.offloads: list[str] = []
        self.tunnel: TunnelTx | None = None  # the tunnel GSO path, when the kernel has it
        self.source_ports = 1  # outer UDP source ports the flows are spread over (the tunnel port alone: 1)

    async def start(self, ctx: Context) -> None:
        self.ctx = ctx
        opts, backend, own = ctx.opts, ctx.config.backend, ctx.own
        ipv4 = ctx.config.ipv4  # false: an IPv6-only overlay, no IPv4 VTEP, socket or routes at all
        assert own.vtep_mac is not None or not ipv4
        if own.vni is not None and own.vni != backend.vni:
            log.warning("our lease says VNI %d but the config says %d; using the config's", own.vni, backend.vni)
        threaded = fastpath.Engine is not None
        codec_cls = fastpath.Engine if threaded else fastpath.Codec
        v6 = own.v6 if ctx.config.ipv6 is not None and own.v6 is not None and own.v6.vtep_mac else None
        if not ipv4 and v6 is None:
            raise StartupError("an IPv6-only node needs an IPv6 VTEP: its lease has no BackendV6Data")
        # (an IPv6-only node's codec has an empty IPv4 side: its IPv6 VTEP stands in for the IPv4 one)
        self.codec = codec_cls(backend.vni, own.vtep_mac or v6.vtep_mac, ctx.config.subnet_len or 32, ctx.mtu,
                               backend.port, strict_source=opts.strict_source, vtep_mac6=v6.vtep_mac if v6 else None,
                               subnet_len6=ctx.config.ipv6.subnet_len if v6 else 0)
        sock = self.open_socket(ctx, backend.port, "a kernel vxlan device or another vxland on this port?") \
            if ipv4 else None
        sock6 = self._open_socket6(ctx, v6.public_ip, backend.port) if v6 is not None and v6.public_ip else None
        tun = await self.open_tun(ctx, opts.tun_name or f"flannel.{backend.vni}", threaded and opts.offload)
        self.offloads = self._probe_offloads(threaded, tun, sock or sock6)
        if sock and sock6 is not None and "udp-gro" in self.offloads:
            probe_udp_offloads(sock6)  # UDP_GRO on it too (what the IPv4 socket has, it has)
        if threaded:
            packet_sock = self._open_packet_socket(ctx, sock, backend.port) if sock else None
            # the IPv6 underlay's frames too, for the same reason (a kernel flannel-v6 peer's partial checksums)
            packet_sock6 = self._open_packet_socket(ctx, sock6, backend.port) \
                if sock6 and (packet_sock or not ipv4) else None
            tunnel = await self._open_tunnel_tx(ctx, tun)
            tx_socks = self._open_source_port_sockets(ctx, sock) if sock else []
            tx_socks6 = self._open_source_port_sockets(ctx, sock6, open_udp6_socket) if sock6 is not None else []
            self.source_ports = max(len(tx_socks) if ipv4 else len(tx_socks6), 1)
            self.run(ctx, ThreadedDataPlane(self.codec, tun.fd, sock, tun.vnet_hdr, "udp-gso" in self.offloads,
                                            "udp-gro" in self.offloads, "tun-uso" in self.offloads, opts.engine_nice,
                                            opts.engine_sched, packet_sock, tx_socks, tunnel, sock6, packet_sock6,
                                            tx_socks6))
            for udp, packet in ((sock, packet_sock), (sock6, packet_sock6)):
                if udp is not None and packet is not None:
                    stop_receiving(udp)  # the packet socket reads what it would
                elif udp is not None:
                    receive_again(udp)  # (a socket a reload handed over may have had that filter)
            self.hub = CaptureHub(self.codec, opts.capture_snaplen)
            ctx.cleanups.append(self.hub.close)
        else:
            self.run(ctx, DataPlane(self.codec, tun.fd, sock, sock6=sock6))
        if backend.direct_routing:
            self.routes = PeerRoutes()
        self._start_capture(ctx)

    def _open_socket6(self, ctx: Context, public_ipv6: str, port: int):
        """The IPv6 underlay's socket of a dual-stack node (flannel-v6.<VNI>'s port)."""
        return self.tunnel_socket(ctx, "udp6", public_ipv6, port,
                                  "a kernel flannel-v6 device or another vxland on this port?")

    def _open_source_port_sockets(self, ctx: Context, sock, opener=open_udp_socket) -> list:
        """--outer-source-ports N > 1 (default 32): N sending sockets on ports of the kernel's
        ephemeral range (bound to port 0, as udp_flow_src_port picks from ip_local_port_range),
        beside ``sock`` (the IPv4 or, with open_udp6_socket, the IPv6 underlay's); they never
        receive (the tunnel port does). Without them every flow leaves from the tunnel port."""
        sockets: list = []
        for _ in range(ctx.opts.outer_source_ports if ctx.opts.outer_source_ports > 1 else 0):
            try:
                sockets.append(opener(sock.getsockname()[0], 0))
                stop_receiving(sockets[-1])
            except OSError as exc:
                log.warning("every flow leaves from port %d: no source-port socket (%s)", sock.getsockname()[1],
                            exc.strerror)
                for opened in sockets:
                    opened.close()
                return []
        ctx.cleanups.extend(s.close for s in sockets)
        return sockets

    async def _open_tunnel_tx(self, ctx: Context, tun: Tun) -> TunnelTx | None:
        """--tunnel-gso auto: super-packets leave whole through a TAP (vxlan.tunnel_tx) when the
        kernel has what that needs; the reason is logged when it does not."""
        if ctx.opts.tunnel_gso != "auto" or not tun.vnet_hdr:
            return None
        name = f"{tun.name[:12]}-tx"
        fd = ctx.inherited.take("tap")
        try:
            tunnel = await asyncio.to_thread(TunnelTx, name, ctx.iface.index, fd)
        except (TunnelTxError, OSError) as exc:
            log.info("super-packets leave as UDP GSO trains: no tunnel GSO path (%s)",
                     getattr(exc, "strerror", None) or exc)
            return None
        ctx.cleanups.append(tunnel.close)
        self.offloads.append("tunnel-gso")
        self.tunnel = tunnel
        self.handles["tap"] = tunnel
        return tunnel

    def tasks(self) -> list[Task]:
        return super().tasks() + ([("tunnel GSO watch", self._watch_tunnel)] if self.tunnel is not None else [])

    async def _watch_tunnel(self) -> None:
        """Say so, once, if the kernel refuses a tunnel GSO frame: the engine splits from then on."""
        while not self.codec.tunnel_errno:
            await asyncio.sleep(TUNNEL_WATCH_S)
        log.warning("the kernel refused a tunnel GSO frame (%s): super-packets leave as UDP GSO trains from now on",
                    os.strerror(self.codec.tunnel_errno))

    def _open_packet_socket(self, ctx: Context, sock, port: int):
        """--underlay-rx auto: receive from a packet socket (vxlan.dataplane.open_packet_socket),
        which says what a UDP socket cannot: which inner checksums a kernel peer left unfinished.
        Its super-packets go whole into a TUN with offloads, split into one without. If it
        cannot be had, or with --underlay-rx udp, from the UDP socket."""
        if ctx.opts.underlay_rx != "auto":
            return None
        address = sock.getsockname()[0]
        # a handed-over packet socket's filter is for the address and port its UDP socket had:
        # the ones asked for now, since that socket was taken over
        name = "packet6" if ":" in address else "packet"
        fd = ctx.inherited.take(name)
        packet_sock = adopt_socket(fd, socket.AF_PACKET, None, None) if fd is not None else None
        if packet_sock is None:
            try:
                packet_sock = open_packet_socket(address, port)
            except OSError as exc:
                log.warning("receiving from the UDP socket: no packet socket (%s); kernel vxlan peers across "
                            "virtual links then need 'ethtool -K flannel.<VNI> tx off'", exc.strerror)
                return None
        ctx.cleanups.append(packet_sock.close)
        self.handles[name] = packet_sock
        if "packet-rx" not in self.offloads:  # (a dual-stack node has one per underlay family)
            self.offloads.append("packet-rx")
        return packet_sock

    def _start_capture(self, ctx: Context) -> None:
        opts = ctx.opts
        if opts.trace_rate:
            if self.hub is None:
                raise StartupError("--trace needs the compiled data plane")
            self.hub.add(TraceSink(sys.stderr, opts.trace_rate, Filter.parse(opts.capture_filter)))
        if opts.capture is not None:
            if self.hub is None:
                raise StartupError("--capture needs the compiled data plane (VXLAN_PURE_PYTHON is set or the "
                                   "extension is missing)")
            try:
                self._capture_next()
            except (OSError, ValueError) as exc:
                raise StartupError(f"--capture {opts.capture}: {getattr(exc, 'strerror', None) or exc}") from None

    def _probe_offloads(self, threaded: bool, tun: Tun, sock) -> list[str]:
        """Probe what the kernel offers; log what is off and why (wireguard-go's habit)."""
        if not threaded:
            return []
        if not self.ctx.opts.offload:
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

    async def add_peer(self, lease: Lease) -> str:
        await self._add_peer6(lease)
        if lease.vtep_mac is None:
            # no IPv4 half (an IPv6-only lease, or a node without an IPv4 device): flanneld
            # programs nothing for it (vxlan_network.go handles BackendData only if present)
            return TUNNEL
        # DirectRouting is decided per event, as vxlan_network.go does
        if self.routes is not None and await asyncio.to_thread(netconf.is_directly_connected, lease.public_ip):
            return await self.route_to(lease)
        await self.tunnel_to(lease)
        if lease.vtep_mac is not None:  # (an IPv6-only lease has no IPv4 half)
            self.codec.set_peer(lease.network_address, lease.vtep_mac, lease.public_ip)
        return TUNNEL

    async def _add_peer6(self, lease: Lease) -> None:
        """The IPv6 half of a dual-stack lease: its subnet through the IPv6 underlay, to its
        flannel-v6 VtepMAC at its PublicIPv6 (vxlan_network.go programs it when the lease has
        BackendV6Data and this node has a flannel-v6 device); with DirectRouting and the
        PublicIPv6 on a connected subnet, a route via it instead (v6DirectRoute)."""
        v6 = lease.v6
        if self.ctx is None or self.ctx.config.ipv6 is None or v6 is None:
            return
        key = int(v6.subnet.network_address)
        if v6.vtep_mac is None or v6.public_ip is None:
            self.codec.remove_peer6(key)
            return
        if self.routes is not None and await asyncio.to_thread(netconf.is_directly_connected, v6.public_ip):
            self.codec.remove_peer6(key)
            await route_peer(self.routes, lease, ipv6=True)
            return
        await unroute_peer(self.routes, lease, ipv6=True)
        try:
            self.codec.set_peer6(key, v6.vtep_mac, v6.public_ip)
        except ValueError as exc:  # another IPv6SubnetLen, a PublicIPv6 no VTEP has
            log.warning("peer %s: its IPv6 half %s is not carried: %s", lease.subnet, v6.subnet, exc)

    async def remove_peer(self, lease: Lease) -> None:
        if lease.v6 is not None and self.ctx is not None and self.ctx.config.ipv6 is not None:
            self.codec.remove_peer6(int(lease.v6.subnet.network_address))
            await unroute_peer(self.routes, lease, ipv6=True)
        await super().remove_peer(lease)

    def describe(self, lease: Lease, how: str) -> str:
        if how == TUNNEL:
            mac = lease.vtep_mac or (lease.v6.vtep_mac if lease.v6 is not None else None)
            return f"VtepMAC {wire.mac_to_str(mac or b'')}"
        return "direct route, no tunnel"

    def started(self) -> tuple[str, str]:
        backend = self.ctx.config.backend
        return (f"VNI {backend.vni}, port {backend.port}",
                f", fastpath {fastpath.IMPLEMENTATION}, offloads: {' '.join(self.offloads) or 'none'}, "
                f"source ports {self.source_ports}")

    # -- capture: --capture PATH, toggled by SIGUSR1 ------------------------------------------
    def _capture_next(self) -> None:
        """Open the next capture file: --capture's path first, then PATH.c1, PATH.c2 ..."""
        opts = self.ctx.opts
        assert self.hub is not None and opts.capture is not None
        path = opts.capture
        if self.capture_files:
            path = path.with_name(f"{path.name}.c{self.capture_files}")
        self.capture_sink = FileSink(path, opts.capture_snaplen, Filter.parse(opts.capture_filter),
                                     opts.capture_count, opts.capture_max_bytes)
        self.capture_files += 1
        self.hub.add(self.capture_sink)
        log.info("capture on: writing %s", path)

    def on_usr1(self) -> bool:
        """Stop a running file capture (the file is complete), or start a new one."""
        if self.ctx is None or self.ctx.opts.capture is None or self.hub is None:
            return False
        if self.capture_sink is not None and not self.capture_sink.done:
            self.hub.remove(self.capture_sink)
            self.capture_sink.close()
            log.info("capture off: %d packets in %s", self.capture_sink.packets,
                     ", ".join(map(str, self.capture_sink.files)))
            self.capture_sink = None
            return True
        try:
            self._capture_next()
        except OSError as exc:
            log.error("capture: cannot open %s: %s", self.ctx.opts.capture, exc.strerror)
        return True

    def metrics(self) -> dict[str, float]:
        values = {"capture_lost_total": float(self.hub.lost)} if self.hub is not None else {}
        values["tunnel_gso"] = float(self.tunnel is not None and not self.codec.tunnel_errno)
        return values
