"""--strict-source: a decapsulated packet's inner source must lie in a subnet leased to the VTEP
that sent it. Both codecs (reference and compiled) and the udp backend's, known answers."""

from __future__ import annotations

import ipaddress

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from vxlan import wire
from vxlan.udpbackend import UdpCodec
from vxlan.wire import DropReason

OWN_MAC = "02:00:00:00:00:01"
PEERS = {"10.5.2.0": ("02:00:00:00:00:02", "198.18.0.2"),  # two subnets on one VTEP
         "10.5.4.0": ("02:00:00:00:00:02", "198.18.0.2"),
         "10.5.3.0": ("02:00:00:00:00:03", "198.18.0.3")}


def make(codec_cls, strict):
    codec = codec_cls(1, wire.mac_to_bytes(OWN_MAC), 24, 1450, 8472, strict_source=strict)
    for subnet, (mac, ip) in PEERS.items():
        codec.set_peer(wire.ipv4_to_int(subnet), wire.mac_to_bytes(mac), ip)
    return codec


def datagram(src, inner=None):
    inner = inner if inner is not None else IP(src=src, dst="10.5.1.2") / ICMP()
    ethertype = 0x86DD if isinstance(inner, IPv6) else 0x0800
    return bytes(VXLAN(flags=0x08, vni=1) / Ether(dst=OWN_MAC, src="02:00:00:00:00:02", type=ethertype) / inner)


CASES = [  # (inner source, verdict from 198.18.0.2 with --strict-source)
    ("10.5.2.9", DropReason.OK),  # its subnet
    ("10.5.4.0", DropReason.OK),  # its other subnet (the flannel.N address, .0)
    ("10.5.3.9", DropReason.SPOOFED_SOURCE),  # another node's subnet
    ("10.5.1.9", DropReason.SPOOFED_SOURCE),  # ours
    ("10.5.9.9", DropReason.SPOOFED_SOURCE),  # in the Network, leased to nobody
    ("192.0.2.1", DropReason.SPOOFED_SOURCE),  # outside the Network
]


@pytest.mark.parametrize("src,verdict", CASES)
def test_inner_source_must_be_the_senders(codec_cls, src, verdict):
    strict = make(codec_cls, True)
    result = wire.decap_one(strict, datagram(src), "198.18.0.2")
    if verdict:
        assert result == verdict
        assert strict.drop_counts()[DropReason.SPOOFED_SOURCE] == 1
    else:
        assert isinstance(result, bytes) and result[12:16] == ipaddress.IPv4Address(src).packed
    # off (the default, as flannel and the kernel's vxlan): every one of them is delivered
    assert isinstance(wire.decap_one(make(codec_cls, False), datagram(src), "198.18.0.2"), bytes)


def test_ipv6_inner_has_no_leased_subnet(codec_cls):
    v6 = datagram(None, IPv6(src="fd00::2", dst="fd00::1") / ICMP())
    assert wire.decap_one(make(codec_cls, True), v6, "198.18.0.2") == DropReason.SPOOFED_SOURCE
    assert isinstance(wire.decap_one(make(codec_cls, False), v6, "198.18.0.2"), bytes)


def test_a_moved_lease_moves_the_right(codec_cls):
    """The check reads the live table: when 10.5.3.0/24 moves to another VTEP, its sources
    are accepted from the new one and refused from the old."""
    codec = make(codec_cls, True)
    packet = datagram("10.5.3.9")
    assert isinstance(wire.decap_one(codec, packet, "198.18.0.3"), bytes)
    codec.set_peer(wire.ipv4_to_int("10.5.3.0"), wire.mac_to_bytes("02:00:00:00:00:05"), "198.18.0.5")
    assert wire.decap_one(codec, packet, "198.18.0.3") == DropReason.UNKNOWN_SENDER  # no lease left there
    assert isinstance(wire.decap_one(codec, packet, "198.18.0.5"), bytes)
    codec.set_peer(wire.ipv4_to_int("10.5.7.0"), wire.mac_to_bytes("02:00:00:00:00:03"), "198.18.0.3")
    assert wire.decap_one(codec, packet, "198.18.0.3") == DropReason.SPOOFED_SOURCE


def test_other_checks_come_first(codec_cls):
    """A datagram that fails an earlier check keeps that verdict, so the counters of the
    existing reasons mean the same with and without --strict-source."""
    codec = make(codec_cls, True)
    assert wire.decap_one(codec, datagram("10.5.3.9"), "198.18.0.9") == DropReason.UNKNOWN_SENDER
    bad = bytearray(datagram("10.5.3.9"))
    bad[22] = 0x47  # IHL 7 > the inner header's room
    bad[24:26] = b"\x00\x14"
    assert wire.decap_one(codec, bytes(bad), "198.18.0.2") == DropReason.BAD_INNER_IP


def test_udp_backend():
    codec = UdpCodec(ipaddress.IPv4Address("10.5.1.0"), 24, 8285, strict_source=True)
    codec.set_peer(wire.ipv4_to_int("10.5.2.0"), None, "198.18.0.2")
    codec.set_peer(wire.ipv4_to_int("10.5.3.0"), None, "198.18.0.3")
    bufs = [bytearray(bytes(IP(src=src, dst="10.5.1.2", ttl=9) / ICMP())) for src in ("10.5.2.9", "10.5.3.9")]
    verdicts, inner = [0, 0], [0, 0]
    assert codec.decap_batch(bufs, [28, 28], ["198.18.0.2", "198.18.0.2"], 2, verdicts, inner)
    assert verdicts == [DropReason.OK, DropReason.SPOOFED_SOURCE]
    assert codec.drop_counts()[DropReason.SPOOFED_SOURCE] == 1
