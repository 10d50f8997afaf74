"""``vxlanctl decode FILE``: a capture as a readable table, outer and inner side by side.

Reads what ``vxland --capture`` and ``/debug/capture`` write (pcapng, raw IPv4 on two
interfaces) with scapy; drop reasons come from the packet comments.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _inner_summary(pkt) -> str:
    from scapy.layers.inet import ICMP, IP, TCP, UDP

    if IP not in pkt:
        return pkt.summary()[:60]
    ip = pkt[IP]
    if TCP in ip:
        t = ip[TCP]
        return f"TCP {ip.src}:{t.sport} > {ip.dst}:{t.dport} [{t.flags}] seq {t.seq}"
    if UDP in ip:
        u = ip[UDP]
        return f"UDP {ip.src}:{u.sport} > {ip.dst}:{u.dport}"
    if ICMP in ip:
        i = ip[ICMP]
        return f"ICMP {ip.src} > {ip.dst} type {i.type} code {i.code}"
    return f"IP proto {ip.proto} {ip.src} > {ip.dst}"


def run(path: Path, extra_ports: list[int]) -> int:
    from scapy.error import Scapy_Exception
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.layers.vxlan import VXLAN
    from scapy.packet import bind_layers
    from scapy.utils import PcapNgReader

    for port in {4789, 8472, *extra_ports}:
        bind_layers(UDP, VXLAN, dport=port)
    try:
        reader = PcapNgReader(str(path))
    except (OSError, Scapy_Exception) as exc:
        print(f"vxlanctl decode: {path}: {exc}", file=sys.stderr)
        return 1
    print(f"{'no':>5} {'time':>10} {'iface':<8} {'dir':<3} {'outer':<48} {'inner':<60} {'len':>6}  drop")
    first = None
    with reader:
        for n, pkt in enumerate(reader, start=1):
            ts = float(pkt.time)
            first = ts if first is None else first
            iface = getattr(pkt, "sniffed_on", None) or "?"
            direction = {1: "in", 2: "out"}.get(getattr(pkt, "direction", None), "?")
            comments = getattr(pkt, "comments", None) or ([pkt.comment] if getattr(pkt, "comment", None) else [])
            drop = " ".join(c.decode(errors="replace") if isinstance(c, bytes) else str(c) for c in comments)
            if not isinstance(pkt, IP):
                pkt = IP(bytes(pkt))
            outer, inner = "", _inner_summary(pkt)
            if VXLAN in pkt:
                ip, udp, vx = pkt[IP], pkt[UDP], pkt[VXLAN]
                outer = f"{ip.src}:{udp.sport} > {ip.dst}:{udp.dport} VNI {vx.vni}"
                inner = _inner_summary(vx[Ether].payload) if Ether in vx else vx.payload.summary()[:60]
            print(f"{n:>5} {ts - first:>10.6f} {iface:<8} {direction:<3} {outer:<48} {inner:<60} "
                  f"{getattr(pkt, 'wirelen', None) or len(pkt):>6}  {drop.removeprefix('drop: ')}")
    return 0
