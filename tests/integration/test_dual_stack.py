"""Dual-stack clusters (flannel >= 0.15, EnableIPv6) on a real etcd: the lease keys and JSON
that flanneld writes, kernel nodes programmed as flanneld programs flannel.<VNI> and
flannel-v6.<VNI> (the lab's emulator, on vxland's registry code), and vxland nodes beside them,
all reaching each other's pods over IPv4 and over IPv6 through the IPv6 underlay."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.integration.helpers import MB, outer_source_ports, seen_source, transfer, wait_for
from vxlan.lab import UNDERLAY6, Lab, LabError, sh

KEY = re.compile(r"^/coreos\.com/network/subnets/172\.7\.\d+\.0-24&fd07:0:0:[0-9a-f]{1,4}::-64$")


def leases(lab: Lab) -> dict[str, dict]:
    if lab.etcd_api == "v2":
        keys = lab.etcdctl("ls", "/coreos.com/network/subnets", api="v2").stdout.split()
        return {k: json.loads(lab.etcdctl("get", k, api="v2").stdout) for k in keys}
    lines = lab.etcdctl("get", "--prefix", "/coreos.com/network/subnets").stdout.splitlines()
    return {k: json.loads(v) for k, v in zip(lines[::2], lines[1::2], strict=True)}


@pytest.mark.parametrize("api", ["v3", "v2"])
def test_kernel_nodes_join_a_dual_stack_cluster(kernel_vxlan, api):
    with Lab(["kernel", "kernel", "kernel"], registry="etcd", ipv6=True, etcd_api=api) as lab:
        got = leases(lab)
        assert len(got) == 3 and all(KEY.match(k) for k in got), got
        for host in lab.hosts:
            key = f"/coreos.com/network/subnets/{host.subnet.network_address}-24&{host.subnet6.network_address}-64"
            value = got[key]
            # LeaseAttrs' field order (pkg/lease/lease.go), both backend data
            assert list(value) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]
            assert value["PublicIPv6"] == host.public_ipv6
            assert value["BackendData"]["VtepMAC"] != value["BackendV6Data"]["VtepMAC"]
            env = host.subnet_file.read_text()
            assert f"FLANNEL_IPV6_NETWORK=fd07::/48\nFLANNEL_IPV6_SUBNET={host.subnet6.network_address + 1}/64\n" \
                in env
        # flannel-v6.1: over the IPv6 underlay, the kernel's MTU for it (1500 - 70)
        link = sh(["ip", "-d", "link", "show", "flannel-v6.1"], ns=lab.hosts[0].ns).stdout
        assert "mtu 1430" in link and f"local {lab.hosts[0].public_ipv6}" in link
        for src in lab.hosts:
            for dst in lab.hosts:
                if src is not dst:
                    assert lab.ping(src, dst, count=1).returncode == 0
                    assert lab.ping(src, dst, count=1, ipv6=True).returncode == 0
                    # full size, DF: 1430 bytes of IPv6 (40 header, 8 ICMPv6)
                    assert lab.ping(src, dst, count=1, size=1430 - 48, dont_fragment=True, ipv6=True).returncode == 0
        if api == "v3":
            h1, h2 = lab.hosts[:2]
            sent, received = transfer(lab, h1, h2, 20 * MB, ipv6=True)
            assert sent == received


def all_pairs_ping_both_families(lab: Lab) -> None:
    """56-byte and full-size DF pings between every pair of pods, over IPv4 and IPv6: 1450 bytes
    of IPv4 (FLANNEL_MTU), 1430 of IPv6 (flannel-v6's MTU, the IPv6 route's on a vxland node)."""
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is dst:
                continue
            for ipv6, full in ((False, 1450 - 28), (True, 1430 - 48)):
                for size, df in ((56, False), (full, True)):
                    ok = lab.ping(src, dst, count=1, size=size, dont_fragment=df, ipv6=ipv6).returncode == 0
                    assert ok, f"h{src.index}->h{dst.index} IPv{6 if ipv6 else 4} {size} bytes\n{lab.log(src)[-1500:]}"


@pytest.mark.parametrize("mode", ["offloads-on", "offloads-off", "pure-python"])
def test_mixed_dual_stack_cluster(kernel_vxlan, mode):
    """2 vxland + 1 kernel node (flannel.1 and flannel-v6.1) on etcd: every pair reaches every
    other over IPv4 and IPv6, 50 MB of TCP over IPv6 arrive intact vxland <-> vxland and
    vxland <-> kernel, with the kernel node's offloads on (its partial checksums and
    super-packets through vxland's IPv6 packet socket) and off; the pure-Python data plane
    too (5 MB: it is the reference, not the fast path)."""
    with Lab(["vxland", "vxland", "kernel"], registry="etcd", ipv6=True, kernel_tx_off=mode != "offloads-on",
             pure_python=mode == "pure-python") as lab:
        h1, h2, h3 = lab.hosts
        started = next(ln for ln in lab.log(h1).splitlines() if "vxland started" in ln)
        assert f"IPv6 subnet {h1.subnet6}" in started and f"public IPv6 {h1.public_ipv6}" in started
        value = leases(lab)[f"/coreos.com/network/subnets/{h1.subnet.network_address}-24&"
                            f"{h1.subnet6.network_address}-64"]
        assert list(value) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]
        assert "FLANNEL_IPV6_SUBNET" in h1.subnet_file.read_text()
        # one TUN; the IPv6 Network routed into it with flannel-v6's MTU
        route = sh(["ip", "-6", "route", "show", "fd07::/48"], ns=h1.ns).stdout
        assert "dev flannel.1" in route and "mtu 1430" in route, route
        all_pairs_ping_both_families(lab)
        for src, dst in ((h1, h2), (h2, h1), (h1, h3), (h3, h1)):
            sent, received = transfer(lab, src, dst, (5 if mode == "pure-python" else 50) * MB, ipv6=True)
            assert sent == received, f"h{src.index} -> h{dst.index}"
        metrics = lab.metrics(h1)
        for reason in ("bad_inner_ip", "bad_outer", "bad_offload", "unknown_sender", "dst_mac_mismatch", "too_big"):
            assert metrics[f'vxland_drops_total{{reason="{reason}"}}'] == 0, reason


def test_vxland_checks_the_ipv6_underlay_address():
    """EnableIPv6 needs an IPv6 underlay address: none on the interface and no --public-ipv6 is
    flannel's error, named, exit 1 (and vxlanctl doctor says so beforehand, with IPv6
    forwarding); a host-gw dual-stack config is refused by name."""
    with Lab(["vxland"], registry="etcd", ipv6=True, defer=(1,)) as lab:
        host = lab.hosts[0]
        doctor = [sys.executable, "-m", "vxlan.ctl", "doctor", "--etcd-endpoints", lab.etcd_endpoints,
                  "--iface", "eth0"]
        ok = sh(doctor, ns=host.ns, check=False).stdout
        assert f"ok   underlay6    eth0 {host.public_ipv6}" in ok and "ok   ip6_forward" in ok, ok
        assert "EnableIPv6 fd07::/48" in ok
        sh(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=0"], ns=host.ns)
        sh(["ip", "-6", "addr", "flush", "dev", "eth0", "scope", "global"], ns=host.ns)
        bad = sh(doctor, ns=host.ns, check=False)
        assert bad.returncode == 1, bad.stdout
        assert "FAIL underlay6    failed to find IPv6 address for interface eth0" in bad.stdout, bad.stdout
        assert "pass --public-ipv6" in bad.stdout and "FAIL ip6_forward" in bad.stdout
        with pytest.raises(LabError, match="did not start"):
            lab.start_node(host, wait_s=10)
        assert "failed to find IPv6 address for interface eth0" in lab.log(host)
        assert host.proc.wait(5) == 1
        lab.put_config({**lab.default_config(), "Backend": {"Type": "host-gw"}})
        with pytest.raises(LabError, match="did not start"):
            lab.start_node(host, wait_s=10)
        assert "EnableIPv6: IPv6 overlays are carried by vxland's vxlan backend only, not by host-gw" in lab.log(host)


@pytest.mark.parametrize("nftables", [False, True], ids=["iptables", "nftables"])
def test_ipv6_masquerade_and_forward_rules(nftables):
    """--ip-masq and the forward rules for the IPv6Network too, as flanneld adds them: ip6tables
    FLANNEL-POSTRTG/FLANNEL-FWD (masqIP6Rules), or the flannel-ipv6 nftables table; a pod's IPv6
    traffic leaving the overlay is masqueraded to the node's IPv6 address, pod to pod is not;
    a deleted rule is put back by the resync."""
    with Lab(["vxland", "vxland"], registry="etcd", ipv6=True, seed_config=False, defer=(1, 2)) as lab:
        lab.put_config({**lab.default_config(), "EnableNFTables": nftables})
        h1, h2 = lab.hosts
        for h in lab.hosts:
            h.extra_args = ["--ip-masq", "--iptables-resync=1", "--iptables-forward-rules=true"]
            lab.start_node(h)
        if nftables:
            ruleset = sh(["nft", "list", "table", "ip6", "flannel-ipv6"], ns=h1.ns).stdout
            assert f"ip6 saddr {lab.network6} ip6 daddr != ff00::/8 masquerade" in ruleset, ruleset
            assert f"ip6 daddr {lab.network6} accept" in ruleset
        else:
            saved = sh(["ip6tables-save"], ns=h1.ns).stdout
            assert f"-A FLANNEL-POSTRTG -s {lab.network6} ! -d ff00::/8" in saved, saved
            assert f"-A FLANNEL-FWD -d {lab.network6}" in saved
            assert "IPv6 masquerade rules installed (ip6tables" in lab.log(h1)
        out_ns, _ = lab.add_outside()
        out_ip6 = str(UNDERLAY6.network_address + 200)
        assert seen_source(lab, h1.pod_ns, out_ns, out_ip6) == h1.public_ipv6  # masqueraded
        assert seen_source(lab, h1.pod_ns, h2.pod_ns, h2.pod_ip6, port=9001) == h1.pod_ip6  # pod to pod: not
        # the resync puts a deleted rule back
        if nftables:
            listing = sh(["nft", "-a", "list", "chain", "ip6", "flannel-ipv6", "postrtg"], ns=h1.ns).stdout
            handle = next(ln.rsplit("# handle ", 1)[1] for ln in listing.splitlines() if "ff00::/8" in ln)
            sh(["nft", "delete", "rule", "ip6", "flannel-ipv6", "postrtg", "handle", handle], ns=h1.ns)
            assert wait_for(lambda: "ff00::/8" in sh(["nft", "list", "table", "ip6", "flannel-ipv6"], ns=h1.ns).stdout,
                            timeout=5)
        else:
            sh(["ip6tables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", str(lab.network6), "!", "-d", "ff00::/8",
                "-m", "comment", "--comment", "flanneld masq", "-j", "MASQUERADE", "--random-fully"], ns=h1.ns)
            assert wait_for(lambda: "ff00::/8" in sh(["ip6tables-save"], ns=h1.ns).stdout, timeout=5)


def test_capture_records_the_ipv6_underlay(kernel_vxlan):
    """--capture on a dual-stack node: the IPv6 underlay's datagrams, both ways, with their
    IPv6 outer headers rebuilt (and the inner ICMPv6 echo in them), beside the IPv4 ones."""
    from scapy.layers.inet import UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.layers.vxlan import VXLAN
    from scapy.utils import PcapNgReader

    with Lab(["vxland", "kernel"], registry="etcd", ipv6=True, defer=(1,)) as lab:
        h1, h2 = lab.hosts
        path = lab.workdir / "h1.pcapng"
        h1.extra_args = ["--capture", str(path), "--capture-filter", "peer=" + h2.public_ipv6]
        lab.start_node(h1)
        assert lab.ping(h1, h2, count=3, interval=0.05, ipv6=True).returncode == 0
        lab.stop_vxland(h1)
        with PcapNgReader(str(path)) as reader:
            frames = [p for p in reader if p.sniffed_on == "underlay"]
        outer = [IPv6(bytes(p)) for p in frames]
        assert {(o.src, o.dst) for o in outer} == {(h1.public_ipv6, h2.public_ipv6), (h2.public_ipv6, h1.public_ipv6)}
        assert all(o[UDP].dport == 8472 or o[UDP].sport == 8472 for o in outer)
        assert sum(o[VXLAN].haslayer(ICMPv6EchoRequest) for o in outer) == 3
        assert sum(o[VXLAN].haslayer(ICMPv6EchoReply) for o in outer) == 3


def test_bad_dual_stack_leases_are_skipped_and_counted():
    """A running dual-stack vxland meets leases it cannot use: each is skipped and counted, the
    daemon and its peers carry on; a good one written next is a peer at once, both halves."""
    with Lab(["vxland", "vxland"], registry="etcd", ipv6=True) as lab:
        h1, h2 = lab.hosts
        good = json.loads(lab.etcdctl("get", "--print-value-only", f"/coreos.com/network/subnets/"
                                      f"{h2.subnet.network_address}-24&{h2.subnet6.network_address}-64").stdout)
        bad = {
            "172.7.201.0-24&fd07:0:0:c9::-64": {**good, "PublicIPv6": "fd00::zz"},
            "172.7.202.0-24&fd07:0:0:ca::-64": {**good, "BackendV6Data": {"VNI": 1, "VtepMAC": "33:33:00:00:00:01"}},
            "172.7.203.0-24&fd07:0:0:cb::1-64": good,  # host bits in the IPv6 half: no subnet key
        }
        for key, value in bad.items():
            lab.etcdctl("put", f"/coreos.com/network/subnets/{key}", json.dumps(value))
        assert wait_for(lambda: lab.metrics(h1)["vxland_registry_skipped_total"] == 3, timeout=5), lab.log(h1)[-2000:]
        assert h1.proc.poll() is None
        assert lab.ping(h1, h2, count=1, ipv6=True).returncode == 0
        assert "PublicIPv6" in lab.log(h1) and "is not an IPv6 address" in lab.log(h1)


def test_direct_routing_routes_both_halves(kernel_vxlan):
    """DirectRouting in a dual-stack cluster on one segment: vxland routes each peer's IPv4
    subnet via its PublicIP and its IPv6 subnet via its PublicIPv6 (v6DirectRoute), as the
    kernel node does; every pair reaches every other over both families, nothing through
    the tunnel."""
    with Lab(["vxland", "vxland", "kernel"], registry="etcd", ipv6=True, backend={"DirectRouting": True}) as lab:
        h1, h2, h3 = lab.hosts
        routes6 = sh(["ip", "-6", "route"], ns=h1.ns).stdout
        for peer in (h2, h3):
            assert f"{peer.subnet6} via {peer.public_ipv6} dev eth0" in routes6, routes6
        for src in lab.hosts:
            for dst in lab.hosts:
                if src is not dst:
                    assert lab.ping(src, dst, count=1).returncode == 0
                    assert lab.ping(src, dst, count=1, ipv6=True).returncode == 0
        metrics = lab.metrics(h1)
        assert metrics['vxland_packets_total{direction="tx"}'] == 0 == metrics['vxland_packets_total{direction="rx"}']
        # a peer gone: its IPv6 route goes too
        lab.stop_vxland(h2)
        lab.delete_lease(f"{h2.subnet.network_address}-24&{h2.subnet6.network_address}-64")
        assert wait_for(lambda: str(h2.subnet6) not in sh(["ip", "-6", "route"], ns=h1.ns).stdout, timeout=5)


def test_a_lost_ipv6_underlay_address_exits_1_and_releases_the_lease():
    """The IPv6 underlay address goes (an operator, SLAAC, a cloud agent): the dual-stack node
    says so and exits 1, releasing the lease that names it, as for its IPv4 address; started
    again, it announces the new one and the peers reach it over IPv6."""
    with Lab(["vxland", "vxland"], registry="etcd", ipv6=True) as lab:
        v1, v2 = lab.hosts
        old, new = v1.public_ipv6, str(UNDERLAY6.network_address + 101)
        key = f"/coreos.com/network/subnets/{v1.subnet.network_address}-24&{v1.subnet6.network_address}-64"
        batch = f"address del {old}/64 dev eth0\naddress add {new}/64 dev eth0 nodad\n"
        sh(["ip", "-batch", "-"], ns=v1.ns, input=batch)
        assert v1.proc.wait(20) == 1
        assert f"the underlay address {old} is gone (eth0 has" in lab.log(v1), lab.log(v1)[-2000:]
        assert wait_for(lambda: key not in lab.etcd_leases(), timeout=3), lab.log(v1)[-3000:]
        lab.start_node(v1)
        assert lab.etcd_leases()[key]["PublicIPv6"] == new
        assert wait_for(lambda: lab.ping(v2, v1, count=1, ipv6=True).returncode == 0, timeout=5)


def test_ipv6_flows_leave_from_several_source_ports(kernel_vxlan):
    """Over the IPv6 underlay too, each flow leaves from one of 32 source ports of the kernel's
    range (its own sockets beside the IPv6 tunnel socket): 16 flows, 8 or more ports."""
    with Lab(["vxland", "kernel"], registry="etcd", ipv6=True) as lab:
        v, k = lab.hosts
        ports = outer_source_ports(lab, v, k, 16, ipv6=True)
        assert len(ports) >= 8, ports
        assert all(32768 <= int(p) <= 60999 for p in ports), ports


def test_ipv6_super_packets_leave_whole_through_the_tunnel(kernel_vxlan):
    """With tunnel GSO (Linux >= 6.17) a super-packet to an IPv6 peer leaves as one UDP tunnel
    frame over the IPv6 underlay, its outer UDP checksum finished by the kernel per segment:
    the kernel flannel-v6 peer's capture shows IPv6 VXLAN frames of several segments, and
    50 MB arrive intact."""
    with Lab(["vxland", "kernel"], registry="etcd", ipv6=True) as lab:
        v, k = lab.hosts
        if "tunnel-gso" not in lab.log(v):
            pytest.skip("no tunnel GSO path on this kernel (Linux < 6.17): IPv6 super-packets are split")
        dump = lab.popen(k.ns, ["tcpdump", "-l", "-nn", "-c", "5", "-i", "eth0",
                                "ip6 and udp port 8472 and greater 3000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        assert dump.stderr is not None
        # (without -v it says so first); EOF ends the wait if tcpdump failed
        assert any("listening on" in line for line in iter(dump.stderr.readline, ""))
        sent, received = transfer(lab, v, k, 50 * MB, ipv6=True)
        assert sent == received
        out, _ = dump.communicate(timeout=10)
        assert out.count(f" > {k.public_ipv6}.8472") == 5, out
        assert lab.metrics(v)['vxland_io_total{event="tunnel_sends"}'] > 0
