"""--strict-source against a known VTEP that sends inner sources it holds no lease for: crafted
datagrams and a real kernel vxlan node's own encapsulation, counted, captured, traced; the
same traffic delivered by a node without the flag (flannel's behaviour, the default)."""

from __future__ import annotations

import ipaddress
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import PcapNgReader

from tests.integration.test_daemon import SEND
from vxlan import wire
from vxlan.lab import Lab, sh

SPOOFED = 'vxland_drops_total{reason="spoofed_source"}'


@pytest.fixture(scope="module")
def lab(kernel_vxlan):
    """h1 vxland --strict-source (capture and trace on), h2 vxland without, h3 a kernel node."""
    with Lab(["vxland", "vxland", "kernel"], defer=(1,)) as lab:
        h1 = lab.hosts[0]
        h1.extra_args = ["--strict-source", "--capture", str(lab.workdir / "strict.pcapng"), "--trace"]
        lab.start_node(h1)
        yield lab


def address_in(subnet: ipaddress.IPv4Network, host: int) -> str:
    return str(subnet.network_address + host)


def test_legitimate_traffic_flows(lab):
    h1, h2, k = lab.hosts
    assert "strict source)" in lab.log(h1)
    for src, dst in ((h2, h1), (k, h1), (h1, h2), (h1, k)):
        proc = lab.ping(src, dst, count=2, interval=0.05)
        assert proc.returncode == 0 and "2 received" in proc.stdout, (src.index, dst.index, proc.stdout)
    # the kernel node's host itself: its source is flannel.1's address (the subnet's .0)
    proc = sh(["ping", "-n", "-c", "2", "-i", "0.05", "-W", "2", h1.pod_ip], ns=k.ns, check=False)
    assert proc.returncode == 0, proc.stdout
    assert lab.metrics(h1)[SPOOFED] == 0
    assert 'strict_source="1"' in next(key for key in lab.metrics(h1) if key.startswith("vxland_info"))


def test_spoofed_sources_are_dropped_counted_and_named(lab):
    h1, h2, k = lab.hosts
    before = lab.metrics(h1)
    ours, theirs = wire.mac_to_str(h1.vtep_mac), wire.mac_to_str(k.vtep_mac)
    sources = [address_in(h2.subnet, 77),  # another node's subnet
               address_in(h1.subnet, 77),  # the receiver's own
               "192.0.2.1"]  # outside the Network
    datagrams = [bytes(VXLAN(vni=lab.vni) / Ether(dst=ours, src=theirs) / IP(src=s, dst=h1.pod_ip) / ICMP())
                 for s in sources]
    sh([sys.executable, "-c", SEND, k.public_ip, h1.public_ip, str(lab.port), *(d.hex() for d in datagrams)],
       ns=k.ns)
    # The kernel node's own vxlan device, made to send from h2's subnet (a compromised node)
    spoof = address_in(h2.subnet, 78)
    sh(["ip", "addr", "add", f"{spoof}/32", "dev", "lo"], ns=k.ns)
    sh(["ping", "-n", "-c", "3", "-i", "0.05", "-W", "1", "-I", spoof, h1.pod_ip], ns=k.ns, check=False)
    time.sleep(0.3)
    after = lab.metrics(h1)
    assert after[SPOOFED] - before[SPOOFED] == 3 + 3
    # received = forwarded + drops on the underlay side, still exact
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in after}
    drops = sum(delta.get(f'vxland_drops_total{{reason="{r.label}"}}', 0) for r in wire.DropReason
                if r and r.side == "underlay")
    assert delta['vxland_received_total{side="underlay"}'] == delta['vxland_packets_total{direction="rx"}'] + drops
    assert "DROP spoofed_source" in lab.log(h1)
    # and h2, without the flag, takes the same kernel-made packets (sourced in h1's subnet)
    other = address_in(h1.subnet, 79)
    sh(["ip", "addr", "add", f"{other}/32", "dev", "lo"], ns=k.ns)
    before2 = lab.metrics(h2)['vxland_packets_total{direction="rx"}']
    sh(["ping", "-n", "-c", "3", "-i", "0.05", "-W", "1", "-I", other, h2.pod_ip], ns=k.ns, check=False)
    time.sleep(0.3)
    after2 = lab.metrics(h2)
    assert after2['vxland_packets_total{direction="rx"}'] - before2 >= 3
    assert after2[SPOOFED] == 0
    # the capture names the reason of each spoofed packet
    assert lab.stop_vxland(h1) == 0
    with PcapNgReader(str(lab.workdir / "strict.pcapng")) as reader:
        named = [IP(bytes(p))[VXLAN][IP].src for p in reader
                 if getattr(p, "comments", None) == [b"drop: spoofed_source"]]
    assert sorted(named) == sorted(sources + [spoof] * 3)
