"""ECN across the tunnel, as a kernel vxlan device carries it (RFC 6040; INET_ECN_encapsulate and
INET_ECN_decapsulate): the outer ECN field follows the inner one, and a CE mark that the underlay
put on the outer header reaches the pod, on each receive path vxland has."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from vxlan import wire
from vxlan.lab import Lab, sh

# Receives UDP datagrams on port 9999 in a pod and prints each one's payload and IP TOS byte
# (IPv6: traffic class); ends 2 s after the last one.
RECV_TOS = """
import select, socket, sys
v6 = ":" in sys.argv[1]
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
if v6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
else:
    s.setsockopt(socket.IPPROTO_IP, 13, 1)  # IP_RECVTOS
s.bind((sys.argv[1], 9999))
print("ready", flush=True)
while select.select([s], [], [], 2)[0]:
    data, anc, _, _ = s.recvmsg(200, socket.CMSG_SPACE(4))
    tos = [int.from_bytes(d[:4], sys.byteorder) if v6 else d[0] for _, kind, d in anc
           if kind == (socket.IPV6_TCLASS if v6 else socket.IP_TOS)][0]
    print(data.decode(), tos, flush=True)
"""

# Sends hex-encoded datagrams, each with its own outer TOS or traffic class ("tos:hex"), from a
# bound address (either family).
SEND_TOS = """
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
v6 = ":" in src
s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for item in sys.argv[4:]:
    tos, hexdata = item.split(":")
    if v6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, int(tos))
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, int(tos))
    s.sendto(bytes.fromhex(hexdata), (dst, port))
"""

DSCP = 0xB8  # EF: kept on the inner header, never copied out (flannel sets no tos on its device)
MODES = {"packet-socket": {}, "udp-socket": {"FLANNELD_UNDERLAY_RX": "udp"}, "pure-python": {"VXLAN_PURE_PYTHON": "1"}}


@pytest.fixture(scope="module", params=list(MODES))
def trio(request):
    with Lab(["vxland", "vxland", "plain"], env=MODES[request.param]) as lab:
        yield lab


def test_a_ce_mark_on_the_outer_header_reaches_the_pod(trio):
    v1, _, plain = trio.hosts
    own, peer = wire.mac_to_str(v1.vtep_mac), wire.mac_to_str(plain.vtep_mac)
    cases = {  # name: (outer ECN, inner ECN, inner ECN the pod gets; None: dropped)
        "ce-ect0": (3, 2, 3), "ce-ect1": (3, 1, 3), "ce-ce": (3, 3, 3), "ce-notect": (3, 0, None),
        "ect0-ect1": (2, 1, 1), "ect1-notect": (1, 0, 0), "notect-ect0": (0, 2, 2),
    }
    datagrams = []
    for name, (outer, inner, _) in cases.items():
        frame = (VXLAN(flags=0x08, vni=trio.vni) / Ether(dst=own, src=peer) /
                 IP(src=plain.pod_ip, dst=v1.pod_ip, tos=DSCP | inner) / UDP(sport=5555, dport=9999) / name.encode())
        datagrams.append(f"{outer}:{bytes(frame).hex()}")
    before = trio.metrics(v1)['vxland_drops_total{reason="ce_not_ect"}']
    recv = trio.popen(v1.pod_ns, [sys.executable, "-c", RECV_TOS, v1.pod_ip], stdout=subprocess.PIPE, text=True)
    assert recv.stdout.readline().strip() == "ready"
    sh([sys.executable, "-c", SEND_TOS, plain.public_ip, v1.public_ip, str(trio.port), *datagrams], ns=plain.ns)
    out, _ = recv.communicate(timeout=15)
    got = {name: int(tos) for name, tos in (line.split() for line in out.splitlines())}
    assert got == {name: DSCP | want for name, (_, _, want) in cases.items() if want is not None}
    assert trio.metrics(v1)['vxland_drops_total{reason="ce_not_ect"}'] - before == 1


def test_the_outer_ecn_field_follows_the_inner_one(trio):
    """ping -Q sets the inner TOS: the outer header carries its ECN field (CE as ECT(0)), DSCP 0."""
    v1, v2, _ = trio.hosts
    dump = trio.popen(v2.ns, ["tcpdump", "-l", "-nn", "-v", "-c", "4", "-i", "eth0",
                              f"src host {v1.public_ip} and udp dst port {trio.port}"],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(1)
    for inner in (0, 1, 2, 3):
        sh(["ping", "-n", "-c", "1", "-W", "2", "-Q", str(DSCP | inner), v2.pod_ip], ns=v1.pod_ns)
    out, _ = dump.communicate(timeout=10)
    outer = re.findall(r"^[\d:.]+ IP \(tos 0x([0-9a-f]+)", out, re.M)  # the outer header's line, timestamped
    assert [int(tos, 16) for tos in outer] == [0, 1, 2, 2], out


def test_tcp_with_ecn_leaves_ect0_on_every_path(trio):
    """A pod's ECN-capable TCP (net.ipv4.tcp_ecn=1): its super-packets and segments leave as
    ECT(0) outside too, whichever way vxland sends them (tunnel GSO, UDP GSO trains, one by one)."""
    v1, v2, _ = trio.hosts
    for host in (v1, v2):
        sh(["sysctl", "-qw", "net.ipv4.tcp_ecn=1"], ns=host.pod_ns)
    dump = trio.popen(v2.ns, ["tcpdump", "-l", "-nn", "-q", "-c", "200", "-i", "eth0",
                              f"src host {v1.public_ip} and udp dst port {trio.port} and ip[1] & 3 == 2"],
                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)
        result = trio.iperf3(v1, v2, 1)
        out, _ = dump.communicate(timeout=10)
    finally:
        for host in (v1, v2):
            sh(["sysctl", "-qw", "net.ipv4.tcp_ecn=2"], ns=host.pod_ns)  # the kernel's default
    assert result["end"]["sum_received"]["bytes"] > 0
    assert len(out.splitlines()) == 200


@pytest.mark.parametrize("mode", list(MODES))
def test_a_ce_mark_on_an_ipv6_outer_header_reaches_the_pod(mode):
    """Dual-stack: a CE mark in the outer IPv6 traffic class reaches the pod's inner IPv6
    packet (and an inner Not-ECT one is dropped), on each receive path."""
    import json

    from scapy.layers.inet6 import IPv6

    with Lab(["vxland", "plain"], registry="etcd", ipv6=True, env=MODES[mode], defer=(1,)) as lab:
        v1, plain = lab.hosts
        plain_mac6 = wire.random_vtep_mac()
        value = {"PublicIP": plain.public_ip, "PublicIPv6": plain.public_ipv6, "BackendType": "vxlan",
                 "BackendData": {"VNI": 1, "VtepMAC": wire.mac_to_str(wire.random_vtep_mac())},
                 "BackendV6Data": {"VNI": 1, "VtepMAC": wire.mac_to_str(plain_mac6)}}
        lab.put_lease("172.7.99.0-24&fd07:0:0:99::-64", json.dumps(value))
        lab.start_node(v1)
        own6 = json.loads(lab.etcdctl("get", "--print-value-only", f"/coreos.com/network/subnets/"
                                      f"{v1.subnet.network_address}-24&{v1.subnet6.network_address}-64").stdout)
        own = own6["BackendV6Data"]["VtepMAC"]
        cases = {"ce-ect0": (3, 2, 3), "ce-notect": (3, 0, None), "ect1-notect": (1, 0, 0), "notect-ect0": (0, 2, 2)}
        datagrams = []
        for name, (outer, inner, _) in cases.items():
            frame = (VXLAN(flags=0x08, vni=1) / Ether(dst=own, src=wire.mac_to_str(plain_mac6), type=0x86DD) /
                     IPv6(src="fd07:0:0:99::2", dst=v1.pod_ip6, tc=DSCP | inner) / UDP(sport=5555, dport=9999) /
                     name.encode())
            datagrams.append(f"{outer}:{bytes(frame).hex()}")
        recv = lab.popen(v1.pod_ns, [sys.executable, "-c", RECV_TOS, v1.pod_ip6], stdout=subprocess.PIPE,
                         text=True)
        assert recv.stdout.readline().strip() == "ready"
        sh([sys.executable, "-c", SEND_TOS, plain.public_ipv6, v1.public_ipv6, "8472", *datagrams], ns=plain.ns)
        out, _ = recv.communicate(timeout=15)
        got = {name: int(tc) for name, tc in (line.split() for line in out.splitlines())}
        want = {name: DSCP | ecn for name, (_, _, ecn) in cases.items() if ecn is not None}
        assert got == want, lab.log(v1)[-800:]
        assert lab.metrics(v1)['vxland_drops_total{reason="ce_not_ect"}'] == 1
