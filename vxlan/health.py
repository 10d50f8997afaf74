"""``/healthz``, ``/readyz``, ``/peers``, ``/metrics`` on ``--healthz-ip:--healthz-port`` (vxlan.httpserve, prometheus).

The counters live in the data plane and the codec; a custom collector reads them at scrape
time, so nothing on the packet path knows about Prometheus.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from vxlan.httpserve import ANY_METHOD, HttpServer, Request, Response
from vxlan.wire import DropReason

# When this image of vxland started. A reload (SIGHUP) re-executes it: the PID stays, the
# counters start again from 0, and this moves, as Prometheus expects of a restart.
IMAGE_STARTED = time.time()


@dataclass
class MetricsSource:
    """What /metrics reads; callables so the numbers are read at scrape time."""

    dataplane: object | None  # vxlan.dataplane.DataPlane (tx/rx packets and bytes); None: not (yet) vxlan
    codec: object | None  # drop_counts(), peer_count()
    registry: Callable[[], dict[str, float]]  # Registry.metrics: lease expiry, etcd state...
    info: dict[str, str]
    ready: Callable[[], bool] = lambda: True  # /readyz
    peers: Callable[[], list[dict]] = list  # /peers
    peer_count: Callable[[], int] = lambda: 0  # vxland_peers: without building /peers (65,536 dicts)


# Registry metrics by the name Registry.metrics() gives them: (type, help).
REGISTRY_METRICS = {
    "lease_expiry_seconds": ("gauge", "Seconds until our subnet lease expires (+Inf: a static lease)"),
    "etcd_connected": ("gauge", "1 while the etcd watch is connected, 0 while vxland is reconnecting"),
    "registry_skipped_total": ("counter", "Registry keys or values that did not parse and were skipped"),
    "registry_reload_errors": ("gauge", "Times the registry file changed but did not parse"),
    "lease_renewals_total": ("counter", "Successful renewals of our subnet lease"),
    "capture_lost_total": ("counter", "Capture records lost to full rings (the packets were forwarded)"),
    "tunnel_gso": ("gauge", "1 while super-packets leave whole as UDP tunnel GSO frames (--tunnel-gso), 0 if not "
                            "or since the kernel refused one"),
    "task_failures_total": ("counter", "Unexpected failures of long-lived tasks (registry watch, lease renewal, "
                                       "route check, rules resync); each was logged and started again"),
    "lease_reserved": ("gauge", "1 if our lease is a reservation (no TTL, never renewed)"),
}


class _Collector:
    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self):
        yield GaugeMetricFamily("process_start_time_seconds", "Start time of the process (of this image of it: a "
                                "reload re-executes vxland, its counters start from 0 again) since the Unix epoch",
                                value=IMAGE_STARTED)
        yield GaugeMetricFamily("vxland_ready", "1 once lease, device, rules and subnet.env are in place",
                                value=1.0 if self.source.ready() else 0.0)
        for name, value in self.source.registry().items():
            kind, help_text = REGISTRY_METRICS.get(name, ("gauge", name))
            if kind == "counter":
                yield CounterMetricFamily(f"vxland_{name.removesuffix('_total')}", help_text, value=value)
            else:
                yield GaugeMetricFamily(f"vxland_{name}", help_text, value=value)
        info = GaugeMetricFamily("vxland_info", "Static facts about this node",
                                 labels=sorted(self.source.info))
        info.add_metric([self.source.info[k] for k in sorted(self.source.info)], 1)
        yield info
        yield GaugeMetricFamily("vxland_peers", "Remote nodes in the peer table", value=self.source.peer_count())
        if self.source.dataplane is not None and self.source.codec is not None:
            yield from self._data_plane(self.source.dataplane, self.source.codec)

    def _data_plane(self, dp, codec):
        """The tunnel backends' counters (none for host-gw)."""
        packets = CounterMetricFamily(
            "vxland_packets", "Inner packets forwarded: tx = TUN to tunnel, rx = tunnel to TUN",
            labels=["direction"])
        packets.add_metric(["tx"], dp.tx_packets)
        packets.add_metric(["rx"], dp.rx_packets)
        yield packets
        octets = CounterMetricFamily(
            "vxland_bytes", "Inner IP bytes forwarded, by direction", labels=["direction"])
        octets.add_metric(["tx"], dp.tx_bytes)
        octets.add_metric(["rx"], dp.rx_bytes)
        yield octets
        received = CounterMetricFamily(
            "vxland_received", "Packets received before any check: tun = read from the TUN (a TSO super-packet "
            "as its segments), underlay = VXLAN datagrams (a GRO train as its datagrams). Per side, received = "
            "forwarded (vxland_packets_total) + the drops of that side's reasons", labels=["side"])
        received.add_metric(["tun"], dp.tun_received)
        received.add_metric(["underlay"], dp.udp_received)
        yield received
        drops = CounterMetricFamily("vxland_drops", "Packets dropped, by reason", labels=["reason"])
        counts = codec.drop_counts()
        for reason in DropReason:
            if reason is not DropReason.OK:
                drops.add_metric([reason.label], counts[reason])
        yield drops
        io = CounterMetricFamily("vxland_io", "Data plane system calls and offload events "
                                 "(tun_reads, tso_packets, tso_in_place, udp_sends, gso_sends, udp_recvs, gro_trains, "
                                 "tun_writes, coalesced, super_writes, tunnel_sends, sched_switches)", labels=["event"])
        for name, value in dp.io_stats().items():
            io.add_metric([name], value)
        yield io
        yield GaugeMetricFamily("vxland_tunnel_peers", "Remote VTEPs in the data plane's table",
                                value=codec.peer_count())


def make_server(source: MetricsSource) -> HttpServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(source))

    async def healthz(_request: Request) -> Response:
        # flanneld's body text (main.go:mustRunHealthz), so existing probes keep matching.
        return Response.text("flanneld is running")

    async def readyz(_request: Request) -> Response:
        # flanneld >= 0.28.9 (main.go): the same texts, so probes written for it keep working
        if source.ready():
            return Response.text("flanneld is ready")
        return Response.text("flanneld is not ready yet", 503)

    async def peers(_request: Request) -> Response:
        return Response(body=json.dumps({"peers": source.peers()}).encode(), content_type="application/json")

    async def metrics(_request: Request) -> Response:
        return Response(body=generate_latest(registry), content_type="text/plain; version=0.0.4; charset=utf-8")

    server = HttpServer()
    server.route("/healthz", healthz, ANY_METHOD)
    server.route("/readyz", readyz, ANY_METHOD)
    server.route("/metrics", metrics)
    server.route("/peers", peers)
    return server


async def start_health_server(source: MetricsSource, host: str, port: int,
                              extra_routes: Callable[[HttpServer], None] | None = None) -> HttpServer:
    server = make_server(source)
    if extra_routes is not None:
        extra_routes(server)
    await server.start(host, port)
    return server
