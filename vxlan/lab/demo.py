"""``vxlanctl demo``: a 3-host lab (two vxland hosts, one kernel vxlan node) joining one etcd
(or, with ``--static``, one registry file), pod-to-pod ping between every pair, iperf3 between
pods, a table of results, teardown."""

from __future__ import annotations

import json
import re
import signal
import sys

from vxlan import lab as labmod
from vxlan import wire
from vxlan.lab import Host, Lab


def iperf3(lab: Lab, client: Host, server: Host, seconds: int, streams: int = 1) -> float:
    """TCP throughput pod to pod in bit/s, as the receiver counted it."""
    report = lab.iperf3(client, server, seconds, "-P", str(streams))
    try:
        return float(report["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError):
        raise labmod.LabError(f"iperf3 {client.pod_ip} -> {server.pod_ip}: no result") from None


def _ping_cell(proc) -> tuple[bool, str]:
    received = re.search(r"(\d+) received", proc.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", proc.stdout)
    ok = proc.returncode == 0 and received is not None and int(received.group(1)) > 0
    return ok, (f"ok {float(rtt.group(1)):.2f} ms" if ok and rtt else "FAIL")


def run(vni: int = 1, port: int = 8472, seconds: int = 5, registry: str = "etcd", etcd_api: str = "v3") -> int:
    reason = labmod.can_run()
    if reason:
        print(f"vxlanctl demo: cannot build the lab: {reason}", file=sys.stderr)
        return 1
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
    with Lab(kinds, vni=vni, port=port, registry=registry, etcd_api=etcd_api) as lab:
        _show_lab(lab, vni, port, registry, etcd_api)
        all_ok = _pings(lab)
        all_ok &= _iperf3s(lab, seconds)
        print("\nall pairs reachable" if all_ok else "\nSOME PAIRS FAILED (daemon logs follow)")
        if not all_ok:
            for h in lab.hosts:
                if h.kind == "vxland":
                    print(f"--- h{h.index} log ---\n{lab.log(h)}")
    print("lab torn down")
    return 0 if all_ok else 1


def _show_lab(lab: Lab, vni: int, port: int, registry: str, etcd_api: str) -> None:
    """What was built: the overlay, the leases in etcd as flanneld writes them, the hosts."""
    print(f"\nvxland demo: VNI {vni}, UDP port {port}, overlay {lab.network}, underlay {labmod.UNDERLAY}, "
          f"MTU {lab.mtu - wire.ENCAP_OVERHEAD} inside, registry: "
          + (f"etcd {etcd_api} at {lab.etcd_endpoints}" if registry == "etcd" else "static file") + "\n")
    if registry == "etcd":
        print(f"etcd's {etcd_api} store now holds (as flanneld"
              f" {'>= 0.18' if etcd_api == 'v3' else '0.15-0.17'} writes them):")
        for key, value in sorted(lab.etcd_leases().items()):
            print(f"  {key}  {json.dumps(value, separators=(',', ':'))}")
        print()
    print(f"{'host':<5} {'kind':<7} {'public IP':<13} {'subnet':<15} {'VtepMAC':<18} pod")
    # kernel: a Linux vxlan device, driven by the flanneld emulator in etcd mode (v2 only on v2)
    for h in lab.hosts:
        print(f"h{h.index:<4} {h.kind:<7} {h.public_ip:<13} {str(h.subnet):<15} "
              f"{wire.mac_to_str(h.vtep_mac):<18} {h.pod_ip}")


def _pings(lab: Lab) -> bool:
    """Every ordered pair, small and full-size with DF; True if all answered."""
    print("\nping pod to pod (3 packets; full 1450-byte packets with DF in the last column)")
    print(f"{'from':<12} {'to':<12} {'56 bytes':<14} 1450 DF")
    all_ok = True
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is dst:
                continue
            ok_small, small = _ping_cell(lab.ping(src, dst, count=3, interval=0.05))
            ok_big, big = _ping_cell(lab.ping(src, dst, count=3, interval=0.05, size=1422, dont_fragment=True))
            all_ok &= ok_small and ok_big
            print(f"h{src.index} {src.kind:<9} h{dst.index} {dst.kind:<9} {small:<14} {big}")
    return all_ok


def _iperf3s(lab: Lab, seconds: int) -> bool:
    """h1 <-> h2, and h1 <-> the kernel node when there is one; True if all ran."""
    print(f"\niperf3 TCP pod to pod, {seconds} s, 1 stream")
    h1, h2 = lab.hosts[0], lab.hosts[1]
    pairs = [(h1, h2), (h2, h1)]
    if len(lab.hosts) > 2:
        pairs += [(h1, lab.hosts[2]), (lab.hosts[2], h1)]
    all_ok = True
    for client, server in pairs:
        try:
            bps = iperf3(lab, client, server, seconds)
            cell = f"{bps / 1e9:.2f} Gbit/s"
        except labmod.LabError as exc:
            all_ok = False
            cell = f"FAIL ({exc})"
        print(f"h{client.index} {client.kind:<7} -> h{server.index} {server.kind:<7} {cell}")
    return all_ok
