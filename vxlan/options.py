"""What the command line (and FLANNELD_* environment) asks of the daemon: vxlan.cli builds it,
the daemon, the backends and the host rules read it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vxlan.capture import DEFAULT_SNAPLEN
from vxlan.dataplane import ENGINE_NICE, ENGINE_SCHED


@dataclass(frozen=True)
class Options:
    subnet_file: Path = Path("/run/flannel/subnet.env")
    iface: tuple[str, ...] = ()
    iface_regex: tuple[str, ...] = ()
    iface_can_reach: str | None = None
    public_ip: str | None = None
    public_ipv6: str | None = None  # --public-ipv6: the IPv6 underlay address (EnableIPv6), else the interface's
    tun_name: str | None = None
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    ip_masq: bool = False
    masq_random_fully: bool = True  # unless --ip-masq-fully-random-disable
    iptables_resync_s: int = 5
    iptables_forward_rules: bool = True
    blackhole_route: bool = False
    offload: bool = True  # --no-offload turns TUN TSO/GRO and UDP GSO/GRO off
    outer_source_ports: int = 32  # --outer-source-ports: sockets the flows are spread over by hash (1: the bound one)
    tunnel_gso: str = "auto"  # --tunnel-gso: auto (super-packets leave whole where the kernel can) or off
    underlay_rx: str = "auto"  # --underlay-rx: auto (a packet socket when the TUN takes offloads) or udp
    engine_nice: int = ENGINE_NICE  # nice value of the compiled engine's two threads
    engine_sched: str = ENGINE_SCHED  # their scheduling policy: auto, other (SCHED_OTHER) or batch (SCHED_BATCH)
    strict_source: bool = False  # drop decapsulated packets whose source is not the sender's subnet
    capture: Path | None = None  # --capture: pcapng file, toggled by SIGUSR1
    capture_filter: str | None = None
    capture_count: int = 0
    capture_max_bytes: int = 0
    capture_snaplen: int = DEFAULT_SNAPLEN
    debug_allow: tuple = ()  # networks besides loopback that may use /debug/*
    trace_rate: int = 0  # --trace: lines per second to stderr (0: off)
