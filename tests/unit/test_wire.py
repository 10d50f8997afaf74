"""Known-answer tests of encap/decap, run against both the reference and the compiled codec.

Expected bytes come from outside this project: scapy builds (explicit MACs) and real frames
captured from Linux kernel vxlan devices (tests/data, from ../shared/data).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from vxlan import wire
from vxlan.wire import HEADROOM, DropReason

DATA = Path(__file__).resolve().parents[1] / "data"
OWN_MAC = "02:00:00:00:00:01"
PEER_MAC = "02:00:00:00:00:02"
PEER_IP = "198.18.0.2"


def make(codec_cls, vni=1, mtu=1450, port=8472):
    codec = codec_cls(vni, wire.mac_to_bytes(OWN_MAC), 24, mtu, port)
    codec.set_peer(wire.ipv4_to_int("10.5.2.0"), wire.mac_to_bytes(PEER_MAC), PEER_IP)
    return codec


def inbound(vni=1, dst=OWN_MAC, src=PEER_MAC, flags=0x08, payload=None):
    """A datagram as a peer would send it to us, built by scapy."""
    inner = bytes(payload if payload is not None else IP(src="10.5.2.2", dst="10.5.1.2") / ICMP() / (b"x" * 32))
    ethertype = 0x86DD if inner and inner[0] >> 4 == 6 else 0x0800
    return bytes(VXLAN(flags=flags, vni=vni) / Ether(dst=dst, src=src, type=ethertype) / inner)


@pytest.mark.parametrize("vni,port", [(1, 8472), (42, 4789), (0xFFFFFF, 8472)])
def test_encap_matches_scapy(codec_cls, vni, port):
    codec = make(codec_cls, vni=vni, port=port)
    inner = IP(src="10.5.1.2", dst="10.5.2.7", flags="DF") / TCP(sport=1234, dport=80, flags="S") / b"hello"
    result = wire.encap_one(codec, bytes(inner))
    assert not isinstance(result, DropReason)
    datagram, dest = result
    expected = bytes(VXLAN(flags=0x08, vni=vni) / Ether(dst=PEER_MAC, src=OWN_MAC, type=0x0800) / inner)
    assert datagram == expected
    assert dest == (PEER_IP, port)


def test_decap_gives_inner_packet(codec_cls):
    codec = make(codec_cls)
    inner = bytes(IP(src="10.5.2.2", dst="10.5.1.2") / UDP(sport=5, dport=6) / b"payload")
    assert wire.decap_one(codec, inbound(payload=inner), PEER_IP) == inner


def test_decap_ipv6_inner(codec_cls):
    codec = make(codec_cls)
    inner = bytes(IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=5, dport=6) / b"six")
    assert wire.decap_one(codec, inbound(payload=inner), PEER_IP) == inner


def test_decap_cuts_ethernet_padding(codec_cls):
    """Hardware VTEPs pad inner frames to 60 bytes; the IP total length says what is real."""
    codec = make(codec_cls)
    inner = bytes(IP(src="10.5.2.2", dst="10.5.1.2") / ICMP())
    assert wire.decap_one(codec, inbound(payload=inner + b"\x00" * 18), PEER_IP) == inner


def test_reserved_bits_are_ignored(codec_cls):
    """RFC 7348 §5: reserved fields MUST be ignored on receipt."""
    codec = make(codec_cls)
    datagram = bytearray(inbound())
    datagram[0] |= 0xF7  # every flag bit but I... and I stays set
    datagram[1:4] = b"\xff\xff\xff"
    datagram[7] = 0xFF
    assert isinstance(wire.decap_one(codec, bytes(datagram), PEER_IP), bytes)


def test_inbound_drop_reasons(codec_cls):
    codec = make(codec_cls, mtu=1450)
    ip = IP(src="10.5.2.2", dst="10.5.1.2")
    cases = {
        DropReason.TOO_SHORT: (inbound()[:21], PEER_IP),
        DropReason.NO_I_FLAG: (inbound(flags=0x00), PEER_IP),
        DropReason.WRONG_VNI: (inbound(vni=2), PEER_IP),
        DropReason.UNKNOWN_SENDER: (inbound(), "198.18.0.99"),
        DropReason.DST_MAC_MISMATCH: (inbound(dst="02:00:00:00:00:09"), PEER_IP),
        DropReason.DST_MAC_BROADCAST: (inbound(dst="ff:ff:ff:ff:ff:ff"), PEER_IP),
        DropReason.ARP: (bytes(VXLAN(vni=1) / Ether(dst=OWN_MAC, src=PEER_MAC) / ARP()), PEER_IP),
        DropReason.BAD_ETHERTYPE: (bytes(VXLAN(vni=1) / Ether(dst=OWN_MAC, src=PEER_MAC, type=0x88CC) / (b"x" * 40)),
                                   PEER_IP),
        DropReason.TOO_BIG: (inbound(payload=ip / (b"x" * 1500)), PEER_IP),
    }
    for reason, (datagram, sender) in cases.items():
        assert wire.decap_one(codec, datagram, sender) == reason, reason.name
    multicast = inbound(dst="01:00:5e:00:00:01")
    assert wire.decap_one(codec, multicast, PEER_IP) == DropReason.DST_MAC_BROADCAST
    counts = codec.drop_counts()
    for reason in cases:
        expected = 2 if reason == DropReason.DST_MAC_BROADCAST else 1
        assert counts[reason] == expected, reason.name


@pytest.mark.parametrize("mutate", [
    lambda b: b[:HEADROOM + 19],  # shorter than an IPv4 header
    lambda b: b[:HEADROOM] + bytes([0x55]) + b[HEADROOM + 1:],  # version 5
    lambda b: b[:HEADROOM] + bytes([0x44]) + b[HEADROOM + 1:],  # IHL 4 (16 bytes)
    lambda b: b[:HEADROOM + 2] + (len(b) - HEADROOM + 1).to_bytes(2, "big") + b[HEADROOM + 4:],  # total > datagram
    lambda b: b[:HEADROOM + 2] + (19).to_bytes(2, "big") + b[HEADROOM + 4:],  # total < header
])
def test_malformed_inner_ip(codec_cls, mutate):
    codec = make(codec_cls)
    assert wire.decap_one(codec, mutate(inbound()), PEER_IP) == DropReason.BAD_INNER_IP


def test_mtu_boundary(codec_cls):
    codec = make(codec_cls, mtu=1450)
    ip = IP(src="10.5.2.2", dst="10.5.1.2")
    exact = inbound(payload=ip / (b"x" * (1450 - 20)))
    assert isinstance(wire.decap_one(codec, exact, PEER_IP), bytes)
    assert wire.decap_one(codec, inbound(payload=ip / (b"x" * (1451 - 20))), PEER_IP) == DropReason.TOO_BIG


def test_outbound_drop_reasons(codec_cls):
    codec = make(codec_cls)
    assert wire.encap_one(codec, bytes(IP(dst="10.5.9.1") / ICMP())) == DropReason.NO_ROUTE
    assert wire.encap_one(codec, bytes(IPv6(dst="fd00::1"))) == DropReason.NO_ROUTE
    assert wire.encap_one(codec, b"\x10" * 30) == DropReason.NOT_IP
    assert wire.encap_one(codec, b"") == DropReason.NOT_IP
    assert codec.drop_counts()[DropReason.NO_ROUTE] == 2


def test_peer_table_updates(codec_cls):
    codec = make(codec_cls)
    packet = bytes(IP(dst="10.5.2.9") / ICMP())
    codec.set_peer(wire.ipv4_to_int("10.5.2.0"), wire.mac_to_bytes("02:00:00:00:00:0a"), "198.18.0.10")
    datagram, dest = wire.encap_one(codec, packet)
    assert dest == ("198.18.0.10", 8472) and datagram[8:14] == wire.mac_to_bytes("02:00:00:00:00:0a")
    assert wire.decap_one(codec, inbound(), PEER_IP) == DropReason.UNKNOWN_SENDER  # the old VTEP is gone
    codec.remove_peer(wire.ipv4_to_int("10.5.2.0"))
    codec.remove_peer(wire.ipv4_to_int("10.5.2.0"))  # idempotent
    assert wire.encap_one(codec, packet) == DropReason.NO_ROUTE
    assert codec.peer_count() == 0
    with pytest.raises(ValueError):
        codec.set_peer(wire.ipv4_to_int("10.5.2.1"), wire.mac_to_bytes(PEER_MAC), PEER_IP)


def test_batch_headroom_in_place(codec_cls):
    """The batch API writes headers into the headroom of the caller's buffers."""
    codec = make(codec_cls)
    packets = [bytes(IP(dst=f"10.5.2.{i}") / ICMP() / (bytes([i]) * i)) for i in range(1, 5)]
    packets.insert(2, bytes(IP(dst="10.9.0.1") / ICMP()))
    bufs = [bytearray(HEADROOM + 2048) for _ in packets]
    for buf, pkt in zip(bufs, packets, strict=True):
        buf[HEADROOM:HEADROOM + len(pkt)] = pkt
    verdicts, dests = [0] * len(bufs), [None] * len(bufs)
    ok = codec.encap_batch(bufs, [len(p) for p in packets], len(bufs), verdicts, dests)
    assert ok == 4 and verdicts[2] == DropReason.NO_ROUTE
    template = wire.encap_template(1, wire.mac_to_bytes(PEER_MAC), wire.mac_to_bytes(OWN_MAC))
    for i, pkt in enumerate(packets):
        if i != 2:
            assert bytes(bufs[i][:HEADROOM + len(pkt)]) == template + pkt


def _kernel_cases():
    meta = json.loads((DATA / "kernel-frames.json").read_text())
    for entry in meta:
        for frame in rdpcap(str(DATA / entry["file"])):
            yield entry, frame


@pytest.mark.parametrize("entry,frame", list(_kernel_cases()),
                         ids=lambda v: v["file"] if isinstance(v, dict) else v.summary()[-40:])
def test_kernel_frames(codec_cls, entry, frame):
    """Decap of a real kernel frame gives its inner packet; encap of that gives the same bytes."""
    hosts = {h["public_ip"]: h for h in entry["hosts"].values()}
    sender, receiver = hosts[frame[IP].src], hosts[frame[IP].dst]
    payload = bytes(frame[UDP].payload)
    assert frame[UDP].dport == entry["udp_port"]

    def codec_for(me, peer):
        codec = codec_cls(entry["vni"], wire.mac_to_bytes(me["vtep_mac"]), 24, 1450, entry["udp_port"])
        subnet = ipaddress.IPv4Network(peer["subnet"])
        codec.set_peer(int(subnet.network_address), wire.mac_to_bytes(peer["vtep_mac"]), peer["public_ip"])
        return codec

    inner = wire.decap_one(codec_for(receiver, sender), payload, sender["public_ip"])
    assert inner == payload[HEADROOM:]
    datagram, dest = wire.encap_one(codec_for(sender, receiver), inner)
    assert datagram == payload
    assert dest == (receiver["public_ip"], entry["udp_port"])


def test_mac_helpers():
    assert wire.mac_to_str(wire.mac_to_bytes("0A:1b:2c:3d:4e:5f")) == "0a:1b:2c:3d:4e:5f"
    for bad in ("0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:zz", "0a1b2c3d4e5f"):
        with pytest.raises(ValueError):
            wire.mac_to_bytes(bad)
    mac = wire.random_vtep_mac()
    assert mac[0] & 0x03 == 0x02  # locally administered, unicast


def test_every_drop_reason_has_a_side():
    """vxland_received_total{side} = forwarded + the drops of that side: each reason belongs
    to exactly one side (ttl_expired, the udp backend's, to both)."""
    sides = {r.label: r.side for r in wire.DropReason if r is not wire.DropReason.OK}
    assert set(sides.values()) == {"tun", "underlay", "both"}
    assert {k for k, v in sides.items() if v == "tun"} == {"no_route", "not_ip", "send_failed", "bad_offload"}
    assert sides["tun_write_failed"] == "underlay" and sides["ttl_expired"] == "both"


def test_drop_reasons_are_numbered_alike_in_wire_and_the_engine():
    """setup.py refuses to build when they differ; this says so in make test too."""
    from fastpath.reasons_check import mismatches, reasons_of_header

    root = Path(__file__).resolve().parents[2]
    assert mismatches(root) == []
    assert len(reasons_of_header((root / "fastpath" / "vxengine.h").read_text())) == len(DropReason)
