"""vxland <-> vxland and vxland <-> kernel vxlan, both directions, at VNI 1/8472 and 42/4789.

The kernel node keeps its offloads on, as real hosts do: across veth its vxlan device sends
inner TCP checksums unfinished and TCP super-packets whole (issue #14), which vxland reads from
its packet socket. One test keeps the old set-up (tx checksum offload off on the kernel node)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.integration.helpers import MB, kernel_has_tunnel_gso, outer_source_ports, transfer
from vxlan.lab import Lab, sh

pytestmark = pytest.mark.offload  # make test runs this module with offloads on and off


@pytest.fixture(scope="module", params=[(1, 8472), (42, 4789)], ids=["vni1-8472", "vni42-4789"])
def mixed(request, kernel_vxlan):
    vni, port = request.param
    with Lab(["vxland", "vxland", "kernel"], vni=vni, port=port) as lab:
        yield lab


def pairs(lab):
    v1, v2, k = lab.hosts
    return [(v1, v2), (v2, v1), (v1, k), (k, v1)]


def test_started_on_the_right_port_and_vni(mixed):
    for host in mixed.hosts[:2]:
        log = mixed.log(host)
        assert f"VNI {mixed.vni}, port {mixed.port}, MTU 1450" in log
        assert "2 peers" in log
        # FLANNELD_NO_OFFLOAD=1 (make test's second pass) reaches the daemons like the flag
        if os.environ.get("FLANNELD_NO_OFFLOAD") == "1":
            assert "offloads: packet-rx," in log
        else:  # tun-uso needs Linux >= 6.2, tunnel-gso 6.17, the rest is older
            assert re.search(r"offloads: tun-tso-gro( tun-uso)? udp-gso udp-gro packet-rx( tunnel-gso)?,", log), log
            assert ("tunnel-gso," in log) == kernel_has_tunnel_gso(), log
        info = [k for k in mixed.metrics(host) if k.startswith("vxland_info")][0]
        assert f'vni="{mixed.vni}"' in info and f'port="{mixed.port}"' in info


def test_full_size_df_ping(mixed):
    for src, dst in pairs(mixed):
        proc = mixed.ping(src, dst, count=2, size=1422, dont_fragment=True)  # 1450-byte IP packets
        assert proc.returncode == 0, f"h{src.index}->h{dst.index}: {proc.stdout}{proc.stderr}"
        assert "2 received" in proc.stdout


def test_oversize_df_ping_is_an_error(mixed):
    for src, dst in pairs(mixed):
        proc = mixed.ping(src, dst, count=1, size=1423, dont_fragment=True)  # 1451 bytes
        assert proc.returncode != 0
        assert "message too long" in proc.stdout + proc.stderr and "mtu=1450" in proc.stdout + proc.stderr
    # From the host itself the TUN's own MTU is what refuses it.
    v1, v2, _ = mixed.hosts
    proc = sh(["ping", "-n", "-c", "1", "-M", "do", "-s", "1423", v2.pod_ip], ns=v1.ns, check=False)
    assert proc.returncode != 0 and "mtu=1450" in proc.stdout + proc.stderr


def test_tcp_50mb_sha256(mixed):
    for i, (src, dst) in enumerate(pairs(mixed)):
        sent, received = transfer(mixed, src, dst, 50 * MB, seed=i)
        assert sent[0] == str(50 * MB)
        assert received == sent, f"h{src.index}->h{dst.index}"
    for host in mixed.hosts[:2]:
        metrics = mixed.metrics(host)
        assert metrics['vxland_bytes_total{direction="rx"}'] > 50 * MB
        assert metrics['vxland_drops_total{reason="bad_inner_ip"}'] == 0


def test_tcp_500mb_sha256(mixed):
    """A long transfer through the offload paths (TSO split, UDP GSO/GRO, TCP GRO), or through
    the plain ones with FLANNELD_NO_OFFLOAD=1: every byte arrives, in order."""
    v1, v2, k = mixed.hosts
    for i, (src, dst) in enumerate([(v1, v2), (v1, k), (k, v1)]):
        sent, received = transfer(mixed, src, dst, 500 * MB, seed=100 + i, port=5002)
        assert received == sent, f"h{src.index}->h{dst.index}"
    # --engine-sched auto: dense traffic turned the engine threads SCHED_BATCH (and back)
    assert mixed.metrics(v1)['vxland_io_total{event="sched_switches"}'] > 0


def test_kernel_node_with_tx_checksum_off(kernel_vxlan):
    """The old advice for kernel nodes (ethtool -K ... tx off): still carried, both ways, and
    so is a vxland that receives from its UDP socket (--underlay-rx udp) then."""
    with Lab(["vxland", "kernel"], kernel_tx_off=True) as lab:
        v, k = lab.hosts
        for i, (src, dst) in enumerate([(v, k), (k, v)]):
            sent, received = transfer(lab, src, dst, 50 * MB, seed=200 + i)
            assert received == sent, f"h{src.index}->h{dst.index}"
    with Lab(["vxland", "kernel"], kernel_tx_off=True, env={"FLANNELD_UNDERLAY_RX": "udp"}) as lab:
        v, k = lab.hosts
        assert "packet-rx" not in lab.log(v)
        for i, (src, dst) in enumerate([(v, k), (k, v)]):
            sent, received = transfer(lab, src, dst, 50 * MB, seed=300 + i)
            assert received == sent, f"h{src.index}->h{dst.index}"


def test_kernel_super_packets_arrive_whole(mixed):
    """A kernel node's TCP super-packets (offloads on) reach the pod through vxland as super-packets."""
    v1, _, k = mixed.hosts
    before = mixed.metrics(v1)['vxland_io_total{event="super_writes"}']
    sent, received = transfer(mixed, k, v1, 20 * MB, seed=7, port=5003)
    assert received == sent
    after = mixed.metrics(v1)
    if os.environ.get("FLANNELD_NO_OFFLOAD") == "1":  # split here, written one segment at a time
        assert after['vxland_io_total{event="super_writes"}'] == before
    else:
        assert after['vxland_io_total{event="super_writes"}'] > before
    assert after['vxland_drops_total{reason="bad_outer"}'] == 0


def test_super_packets_leave_whole(mixed):
    """A pod's TCP super-packets leave vxland as whole UDP tunnel GSO frames (Linux >= 6.17),
    as a kernel vxlan device sends them: the kernel node's underlay sees frames far larger than
    the MTU. Without tunnel GSO (or offloads) they leave as datagrams of at most 1,500 bytes."""
    v1, _, k = mixed.hosts
    whole = kernel_has_tunnel_gso() and os.environ.get("FLANNELD_NO_OFFLOAD") != "1"
    before = mixed.metrics(v1)['vxland_io_total{event="tunnel_sends"}']
    dump = mixed.popen(k.ns, ["tcpdump", "-l", "-nn", "-c", "5", "-i", "eth0",
                              f"src host {v1.public_ip} and udp dst port {mixed.port} and greater 3000"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)
        sent, received = transfer(mixed, v1, k, 20 * MB, seed=8, port=5004)
        time.sleep(0.5)
    finally:
        dump.terminate()
    assert received == sent
    big = [line for line in dump.stdout.read().splitlines() if f"{v1.public_ip}." in line.split(" > ")[0]]
    after = mixed.metrics(v1)['vxland_io_total{event="tunnel_sends"}']
    assert mixed.metrics(v1)["vxland_tunnel_gso"] == float(whole)
    if whole:
        assert len(big) == 5 and after > before, big
    else:
        assert big == [] and after == before


def test_udp_socket_receivers_take_whole_super_packets():
    """vxland peers on --underlay-rx udp: a peer's tunnel GSO frame reaches the UDP socket as
    one datagram (the kernel hands tunnel GSO skbs to a UDP socket whole); it goes to the pod
    as a super-packet, every byte intact both ways."""
    with Lab(["vxland", "vxland"], env={"FLANNELD_UNDERLAY_RX": "udp"}) as lab:
        a, b = lab.hosts
        for i, (src, dst) in enumerate([(a, b), (b, a)]):
            sent, received = transfer(lab, src, dst, 50 * MB, seed=500 + i, port=5006)
            assert received == sent, f"h{src.index}->h{dst.index}"
        metrics = lab.metrics(b)
        assert metrics['vxland_drops_total{reason="too_big"}'] == 0
        whole = kernel_has_tunnel_gso() and os.environ.get("FLANNELD_NO_OFFLOAD") != "1"
        assert (metrics['vxland_io_total{event="super_writes"}'] > 0) == whole


def test_tunnel_gso_off(kernel_vxlan):
    """--tunnel-gso off: super-packets leave as UDP GSO trains (the path of kernels before 6.17);
    500 MB intact both ways with the kernel node's offloads on."""
    with Lab(["vxland", "kernel"], env={"FLANNELD_TUNNEL_GSO": "off"}) as lab:
        v, k = lab.hosts
        assert "tunnel-gso" not in lab.log(v)
        for i, (src, dst) in enumerate([(v, k), (k, v)]):
            sent, received = transfer(lab, src, dst, 500 * MB, seed=400 + i, port=5005)
            assert received == sent, f"h{src.index}->h{dst.index}"
        assert lab.metrics(v)['vxland_io_total{event="tunnel_sends"}'] == 0


def test_tunnel_traffic_on_another_interface_is_received(kernel_vxlan):
    """A multi-homed host: the kernel node reaches vxland's PublicIP over a second link, not
    the underlay interface vxland runs on. A UDP socket takes such datagrams (weak host model);
    so must the packet socket, which is bound to every interface."""
    with Lab(["vxland", "kernel"]) as lab:
        v, k = lab.hosts
        sh(["ip", "link", "add", "side0", "netns", v.ns, "type", "veth", "peer", "name", "side0", "netns", k.ns])
        for host in (v, k):
            sh(["ip", "link", "set", "side0", "up"], ns=host.ns)
        sh(["ip", "route", "replace", f"{v.public_ip}/32", "dev", "side0", "src", k.public_ip], ns=k.ns)
        before = lab.metrics(v)['vxland_packets_total{direction="rx"}']
        proc = lab.ping(k, v, count=3, interval=0.1)
        assert proc.returncode == 0 and "3 received" in proc.stdout, proc.stdout
        sent, received = transfer(lab, k, v, 5 * MB, seed=11)
        assert received == sent
        assert lab.metrics(v)['vxland_packets_total{direction="rx"}'] > before


def test_flows_leave_from_several_source_ports(kernel_vxlan):
    """By default each inner flow leaves from one of 32 source ports picked by its hash, as a
    kernel vxlan device spreads flows for ECMP and RSS: 16 flows take 8 or more (16 into 32 by
    a fair hash: fewer than 8 distinct with probability 5e-5), never from the tunnel port."""
    with Lab(["vxland", "kernel"]) as lab:
        v, k = lab.hosts
        assert "source ports 32" in lab.log(v)
        ports = outer_source_ports(lab, v, k, 16)
        assert len(ports) >= 8, ports
        assert str(lab.port) not in ports
        assert all(32768 <= int(p) <= 60999 for p in ports), ports  # the kernel's ip_local_port_range
