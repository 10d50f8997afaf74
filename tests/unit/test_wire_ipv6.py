"""The codecs' IPv6 half (vxlan.wire and its compiled twin): inner IPv6 between the
flannel-v6.<VNI> VtepMACs over the IPv6 underlay, checked against real frames of kernel
flannel-v6 devices (tests/data/kernel-v6-*, made by tests/data/capture_kernel_v6.py) and scapy
builds. Every test runs on both codecs (``codec_cls``)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from vxlan import wire
from vxlan.wire import HEADROOM, DropReason

DATA = Path(__file__).resolve().parents[1] / "data"
OWN_MAC, OWN_MAC6 = "02:00:00:00:00:01", "02:00:00:00:06:01"
PEER_MAC, PEER_MAC6 = "02:00:00:00:00:02", "02:00:00:00:06:02"
PEER_IP, PEER_IP6 = "198.18.0.2", "fd00:c612::2"


def dual(codec_cls, strict: bool = False, mtu: int = 1450):
    codec = codec_cls(1, wire.mac_to_bytes(OWN_MAC), 24, mtu, 8472, strict, wire.mac_to_bytes(OWN_MAC6), 64)
    codec.set_peer(wire.ipv4_to_int("10.5.2.0"), wire.mac_to_bytes(PEER_MAC), PEER_IP)
    codec.set_peer6(int(ipaddress.IPv6Address("fd07:0:0:2::")), wire.mac_to_bytes(PEER_MAC6), PEER_IP6)
    return codec


def inbound6(inner, dst=OWN_MAC6, src=PEER_MAC6) -> bytes:
    return bytes(VXLAN(flags=0x08, vni=1) / Ether(dst=dst, src=src, type=0x86DD) / bytes(inner))


def ping6(src="fd07:0:0:2::2", dst="fd07:0:0:1::2", size=32):
    return IPv6(src=src, dst=dst) / ICMPv6EchoRequest() / (b"x" * size)


def _kernel_cases():
    for entry in json.loads((DATA / "kernel-v6-frames.json").read_text()):
        for frame in rdpcap(str(DATA / entry["file"])):
            yield entry, frame


@pytest.mark.parametrize("entry,frame", list(_kernel_cases()), ids=lambda v: v.summary()[-50:]
                         if not isinstance(v, dict) else v["file"])
def test_kernel_flannel_v6_frames(codec_cls, entry, frame):
    """Decap of a kernel flannel-v6 frame gives its inner packet; encap of that, for the right
    peer, gives the kernel's VXLAN payload byte for byte and its IPv6 underlay destination."""
    hosts = {h["public_ipv6"]: h for h in entry["hosts"].values()}
    sender, receiver = hosts[frame[IPv6].src], hosts[frame[IPv6].dst]
    payload = bytes(frame[UDP].payload)
    assert frame[UDP].dport == entry["udp_port"] and frame[UDP].chksum != 0  # RFC 6935: the kernel sets it

    def codec_for(me, peer):
        codec = codec_cls(entry["vni"], wire.mac_to_bytes(me["vtep_mac"]), 24, 1450, entry["udp_port"],
                          vtep_mac6=wire.mac_to_bytes(me["vtep_mac_v6"]), subnet_len6=64)
        subnet6 = ipaddress.IPv6Network(peer["subnet6"])
        codec.set_peer6(int(subnet6.network_address), wire.mac_to_bytes(peer["vtep_mac_v6"]), peer["public_ipv6"])
        return codec

    inner = wire.decap_one(codec_for(receiver, sender), payload, sender["public_ipv6"])
    assert inner == payload[HEADROOM:]
    datagram, dest = wire.encap_one(codec_for(sender, receiver), inner)
    assert datagram == payload
    assert dest == (receiver["public_ipv6"], entry["udp_port"])


def test_each_family_goes_to_its_vtep(codec_cls):
    codec = dual(codec_cls)
    v4 = bytes(IP(src="10.5.1.2", dst="10.5.2.7") / UDP())
    datagram, dest = wire.encap_one(codec, v4)
    assert dest == (PEER_IP, 8472) and datagram[8:14] == wire.mac_to_bytes(PEER_MAC)
    v6 = bytes(IPv6(src="fd07:0:0:1::2", dst="fd07:0:0:2::7") / UDP())
    datagram, dest = wire.encap_one(codec, v6)
    assert dest == (PEER_IP6, 8472)
    assert datagram[:HEADROOM] == wire.encap_template(1, wire.mac_to_bytes(PEER_MAC6), wire.mac_to_bytes(OWN_MAC6),
                                                      wire.ETH_P_IPV6)
    assert wire.encap_one(codec, bytes(IPv6(dst="fd07:0:0:3::7") / UDP())) == DropReason.NO_ROUTE
    assert wire.encap_one(codec, v6[:39]) == DropReason.NOT_IP
    # an IPv4-only node (no IPv6 VTEP) routes no IPv6 packet
    v4only = codec_cls(1, wire.mac_to_bytes(OWN_MAC), 24, 1450, 8472)
    assert wire.encap_one(v4only, v6) == DropReason.NO_ROUTE


def test_received_frames_must_name_the_vtep_of_the_underlay_they_came_over(codec_cls):
    codec = dual(codec_cls)
    inner = bytes(ping6())
    assert wire.decap_one(codec, inbound6(inner), PEER_IP6) == inner
    # over the IPv6 underlay to the IPv4 VtepMAC (flannel.<VNI> would not take it either)
    assert wire.decap_one(codec, inbound6(inner, dst=OWN_MAC), PEER_IP6) == DropReason.DST_MAC_MISMATCH
    assert wire.decap_one(codec, inbound6(inner, dst=OWN_MAC6), PEER_IP) == DropReason.DST_MAC_MISMATCH
    assert wire.decap_one(codec, inbound6(inner), "fd00:c612::9") == DropReason.UNKNOWN_SENDER
    assert wire.decap_one(codec, inbound6(inner, dst="33:33:00:00:00:01"), PEER_IP6) == DropReason.DST_MAC_BROADCAST


@pytest.mark.parametrize("inner, verdict", [
    (bytes(ping6())[:39], DropReason.BAD_INNER_IP),  # shorter than its header
    (bytes(ping6())[:-1], DropReason.BAD_INNER_IP),  # payload length beyond the frame
    (bytes(IP(dst="10.5.1.2") / UDP()), DropReason.BAD_INNER_IP),  # IPv4 in an 0x86DD frame
    # extension headers and fragments are forwarded as they are, as the kernel's vxlan does
    (bytes(IPv6(src="fd07:0:0:2::2", dst="fd07:0:0:1::2") / IPv6ExtHdrHopByHop() / UDP()), DropReason.OK),
    (bytes(IPv6(src="fd07:0:0:2::2", dst="fd07:0:0:1::2") / IPv6ExtHdrFragment(m=1) / (b"y" * 64)), DropReason.OK),
])
def test_inner_ipv6_checks(codec_cls, inner, verdict):
    got = wire.decap_one(dual(codec_cls), inbound6(inner), PEER_IP6)
    assert (got if isinstance(got, DropReason) else DropReason.OK) == verdict


def test_ethernet_padding_is_cut_and_the_mtu_holds(codec_cls):
    inner = bytes(ping6(size=0))
    assert wire.decap_one(dual(codec_cls), inbound6(inner + b"\0" * 6), PEER_IP6) == inner
    assert wire.decap_one(dual(codec_cls, mtu=1430), inbound6(ping6(size=1431 - 48)), PEER_IP6) == DropReason.TOO_BIG


def test_strict_source_for_ipv6(codec_cls):
    codec = dual(codec_cls, strict=True)
    assert wire.decap_one(codec, inbound6(ping6()), PEER_IP6) == bytes(ping6())
    spoofed = ping6(src="fd07:0:0:9::2")
    assert wire.decap_one(codec, inbound6(spoofed), PEER_IP6) == DropReason.SPOOFED_SOURCE


@pytest.mark.parametrize("subnet6, ip, text", [
    ("fd07:0:0:2::", "ff02::1", "is not a VTEP address"),
    ("fd07:0:0:2::", "::", "is not a VTEP address"),
    ("fd07:0:0:2::", "::ffff:198.18.0.2", "is not a VTEP address"),
    ("fd07:0:0:2::", "198.18.0.2", "is not an IPv6 address"),
    ("fd07:0:0:2::1", "fd00:c612::2", "is not a subnet address"),
])
def test_bad_ipv6_peers_are_refused(codec_cls, subnet6, ip, text):
    with pytest.raises(ValueError, match=text):
        dual(codec_cls).set_peer6(int(ipaddress.IPv6Address(subnet6)), wire.mac_to_bytes(PEER_MAC6), ip)


def test_peers_and_senders_come_and_go(codec_cls):
    codec = dual(codec_cls)
    subnet6 = int(ipaddress.IPv6Address("fd07:0:0:2::"))
    codec.remove_peer6(subnet6)
    assert wire.decap_one(codec, inbound6(ping6()), PEER_IP6) == DropReason.UNKNOWN_SENDER
    assert wire.encap_one(codec, bytes(ping6(src="fd07:0:0:1::2", dst="fd07:0:0:2::2"))) == DropReason.NO_ROUTE
    # the IPv4 peer of the same node stays
    assert wire.decap_one(codec, bytes(VXLAN(flags=0x08, vni=1) / Ether(dst=OWN_MAC, src=PEER_MAC) /
                                       IP(src="10.5.2.2", dst="10.5.1.2") / UDP()), PEER_IP) != \
        DropReason.UNKNOWN_SENDER
    with pytest.raises(ValueError, match="no IPv6 VTEP"):
        codec_cls(1, wire.mac_to_bytes(OWN_MAC), 24, 1450, 8472).set_peer6(0, wire.mac_to_bytes(PEER_MAC6), PEER_IP6)
    # written in any form, a PublicIPv6 is the sender it names
    codec.set_peer6(subnet6, wire.mac_to_bytes(PEER_MAC6), "FD00:C612:0::2")
    assert wire.decap_one(codec, inbound6(ping6()), PEER_IP6) == bytes(ping6())
    # many peers: the tables grow and shrink without losing one
    subnets = [int(ipaddress.IPv6Address(f"fd07:0:{i:x}:1::")) for i in range(300)]
    for i, sn in enumerate(subnets):
        codec.set_peer6(sn, wire.mac_to_bytes(PEER_MAC6), f"fd00:c612::{i + 10:x}")
    for sn in subnets[::2]:
        codec.remove_peer6(sn)
    for i, sn in enumerate(subnets):
        dst = str(ipaddress.IPv6Address(sn + 5))
        got = wire.encap_one(codec, bytes(IPv6(src="fd07:0:0:1::2", dst=dst) / UDP()))
        if i % 2:
            assert got[1] == (f"fd00:c612::{i + 10:x}", 8472)
        else:
            assert got == DropReason.NO_ROUTE
