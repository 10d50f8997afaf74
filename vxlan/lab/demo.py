"""``vxlanctl demo``: a 3-host lab (two vxland hosts, one kernel vxlan node) joining one etcd
(or, with ``--static``, one registry file), pod-to-pod ping between every pair, iperf3 between
pods, a table of results, teardown. ``--ipv6``: a dual-stack cluster (EnableIPv6), pings and
iperf3 over IPv6 too; ``--ipv6-only``: an IPv6-only one (EnableIPv4 false), over IPv6 alone."""

from __future__ import annotations

import json
import re
import signal
import sys

from vxlan import lab as labmod
from vxlan import wire
from vxlan.lab import Host, Lab


def iperf3(lab: Lab, client: Host, server: Host, seconds: int, streams: int = 1, ipv6: bool = False) -> float:
    """TCP throughput pod to pod in bit/s, as the receiver counted it."""
    report = lab.iperf3(client, server, seconds, "-P", str(streams), ipv6=ipv6)
    try:
        return float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError):
        raise labmod.LabError(f"iperf3 {client.pod_ip} -> {server.pod_ip}: no result") from None


def _ping_cell(proc) -> tuple[bool, str]:
    received = re.search(r"(\d+) received", proc.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
    ok = proc.returncode == 0 and received is not None and int(received.group(1)) > 0
    return ok, (f"ok {float(rtt.group(1)):.2f} ms" if ok and rtt else "FAIL")


def run(vni: int = 1, port: int = 8472, seconds: int = 5, registry: str = "etcd", etcd_api: str = "v3",
        ipv6: bool = False, ipv6_only: bool = False) -> int:
    reason = labmod.can_run()
    if reason:
        print(f"vxlanctl demo: cannot build the lab: {reason}", file=sys.stderr)
        return 1
    if (ipv6 or ipv6_only) and registry != "etcd":
        print(f"vxlanctl demo: --ipv6{'-only' if ipv6_only else ''} runs on etcd (its nodes take their IPv6 subnets "
              "there), not with --static", file=sys.stderr)
        return 2
    ipv6 = ipv6 or ipv6_only
    kinds = ["vxland", "vxland", "kernel"]
    missing = labmod.kernel_vxlan_missing()
    if missing:
        print(f"note: no kernel node in this demo: {missing}")
        kinds = ["vxland", "vxland"]
    # SIGTERM unwinds like Ctrl-C, so the lab's teardown runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if registry == "etcd":
        how = "etcdctl put (v3)" if etcd_api == "v3" else "etcdctl set (v2 API, etcd --enable-v2)"
        print(f"starting etcd (empty), writing the network config with {how}, then the nodes join and take "
              "leases ...")
    with Lab(kinds, vni=vni, port=port, registry=registry, etcd_api=etcd_api, ipv6=ipv6, ipv6_only=ipv6_only) as lab:
        _show_lab(lab, vni, port, registry, etcd_api)
        all_ok = True
        if not ipv6_only:
            all_ok &= _pings(lab)
        if ipv6:
            all_ok &= _pings(lab, ipv6=True)
        if not ipv6_only:
            all_ok &= _iperf3s(lab, seconds)
        if ipv6:
            all_ok &= _iperf3s(lab, seconds, ipv6=True)
        print("\nall pairs reachable" if all_ok else "\nSOME PAIRS FAILED (daemon logs follow)")
        if not all_ok:
            for h in lab.hosts:
                if h.kind == "vxland":
                    print(f"--- h{h.index} log ---\n{lab.log(h)}")
    print("lab torn down")
    return 0 if all_ok else 1


def _show_lab(lab: Lab, vni: int, port: int, registry: str, etcd_api: str) -> None:
    """What was built: the overlay, the leases in etcd as flanneld writes them, the hosts."""
    overlay = "none (IPv6-only)" if lab.ipv6_only else lab.network
    print(f"\nvxland demo: VNI {vni}, UDP port {port}, overlay {overlay}, underlay {labmod.UNDERLAY}, "
          f"MTU {lab.mtu - wire.ENCAP_OVERHEAD} inside, registry: "
          + (f"etcd {etcd_api} at {lab.etcd_endpoints}" if registry == "etcd" else "static file") + "\n")
    if lab.network6 is not None:
        print(f"{'IPv6-only' if lab.ipv6_only else 'dual-stack'}: IPv6 overlay {lab.network6} over the IPv6 "
              f"underlay {labmod.UNDERLAY6}, MTU {lab.mtu - wire.ENCAP_OVERHEAD - 20} inside (flannel-v6's)\n")
    if registry == "etcd":
        print(f"etcd's {etcd_api} store now holds (as flanneld"
              f" {'>= 0.18' if etcd_api == 'v3' else '0.15-0.17'} writes them):")
        for key, value in sorted(lab.etcd_leases().items()):
            print(f"  {key}  {json.dumps(value, separators=(',', ':'))}")
        print()
    print(f"{'host':<5} {'kind':<7} {'public IP':<13} {'subnet':<15} {'VtepMAC':<18} pod")
    # kernel: a Linux vxlan device, driven by the flanneld emulator in etcd mode (v2 only on v2)
    for h in lab.hosts:
        subnet, pod = ("none", "-") if lab.ipv6_only else (str(h.subnet), h.pod_ip)
        print(f"h{h.index:<4} {h.kind:<7} {h.public_ip:<13} {subnet:<15} "
              f"{wire.mac_to_str(h.vtep_mac) or 'none':<18} {pod}" + (f"  IPv6 {h.subnet6} pod {h.pod_ip6}"
                                                                     if h.subnet6 is not None else ""))


def _pings(lab: Lab, ipv6: bool = False) -> bool:
    """Every ordered pair, small and full-size with DF; True if all answered."""
    full = lab.mtu - wire.ENCAP_OVERHEAD - (20 if ipv6 else 0)  # IPv6: flannel-v6's MTU, 1430
    family = "IPv6 " if ipv6 else ""
    print(f"\nping pod to pod over {family or 'IPv4 '}(3 packets; full {full}-byte packets with DF in the last column)")
    print(f"{'from':<12} {'to':<12} {'56 bytes':<14} {full} DF")
    all_ok = True
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is dst:
                continue
            ok_small, small = _ping_cell(lab.ping(src, dst, count=3, interval=0.05, ipv6=ipv6))
            ok_big, big = _ping_cell(lab.ping(src, dst, count=3, interval=0.05, size=full - (48 if ipv6 else 28),
                                              dont_fragment=True, ipv6=ipv6))
            all_ok &= ok_small and ok_big
            print(f"h{src.index} {src.kind:<9} h{dst.index} {dst.kind:<9} {small:<14} {big}")
    return all_ok


def _iperf3s(lab: Lab, seconds: int, ipv6: bool = False) -> bool:
    """h1 <-> h2, and h1 <-> the kernel node when there is one; True if all ran."""
    print(f"\niperf3 TCP pod to pod{' over IPv6' if ipv6 else ''}, {seconds} s, 1 stream")
    h1, h2 = lab.hosts[0], lab.hosts[1]
    pairs = [(h1, h2), (h2, h1)]
    if len(lab.hosts) > 2:
        pairs += [(h1, lab.hosts[2]), (lab.hosts[2], h1)]
    all_ok = True
    for client, server in pairs:
        try:
            bps = iperf3(lab, client, server, seconds, ipv6=ipv6)
            cell = f"{bps / 1e9:.2f} Gbit/s"
        except labmod.LabError as exc:
            all_ok = False
            cell = f"FAIL ({exc})"
        print(f"h{client.index} {client.kind:<7} -> h{server.index} {server.kind:<7} {cell}")
    return all_ok
