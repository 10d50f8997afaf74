"""The compiled codec gives exactly the reference's results on generated input.

Hypothesis builds valid datagrams and packets, then mutates them (truncation, flipped bytes,
wrong fields) or replaces them with noise; both codecs get the same batch and must agree on
every verdict, every inner length and every byte they write. 6,000 + 4,000 examples of
batches of 1-4 inputs: at least 10,000 inputs in all.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import compiled_codec
from vxlan import wire
from vxlan.wire import HEADROOM

OWN_MAC = bytes.fromhex("020000000001")
PEERS = {  # subnet -> (mac, public ip)
    "10.5.2.0": (bytes.fromhex("020000000002"), "198.18.0.2"),
    "10.5.3.0": (bytes.fromhex("020000000003"), "198.18.0.3"),
}
# a dual-stack node: its IPv6 VTEP (flannel-v6) and IPv6 peers, reached over the IPv6 underlay
OWN_MAC6 = bytes.fromhex("020000000601")
PEERS6 = {
    "fd07:0:0:2::": (bytes.fromhex("020000000602"), "fd00:c612::2"),
    "fd07:0:0:3::": (bytes.fromhex("020000000603"), "fd00:c612::3"),
}
SENDERS = ["198.18.0.2", "198.18.0.3", "198.18.0.9", "fd00:c612::2", "fd00:c612::3", "fd00:c612::9"]
MTU = 1450


def codecs(strict_source=False):
    pair = []
    for cls in (wire.Codec, compiled_codec()):
        codec = cls(7, OWN_MAC, 24, MTU, 8472, strict_source=strict_source, vtep_mac6=OWN_MAC6, subnet_len6=64)
        for subnet, (mac, ip) in PEERS.items():
            codec.set_peer(wire.ipv4_to_int(subnet), mac, ip)
        for subnet6, (mac, ip) in PEERS6.items():
            codec.set_peer6(int(ipaddress.IPv6Address(subnet6)), mac, ip)
        pair.append(codec)
    return pair


# inner sources: the two peers' subnets, our own, outside the Network
SOURCES = ["10.5.2.7", "10.5.3.200", "10.5.1.9", "192.0.2.1"]


def ipv4_packet(draw, dst=None):
    ihl = draw(st.sampled_from([5, 5, 5, 6, 15]))
    payload = draw(st.binary(max_size=draw(st.sampled_from([8, 64, 1500]))))
    total = ihl * 4 + len(payload)
    dst = dst or draw(st.sampled_from(["10.5.2.7", "10.5.3.200", "10.5.1.2", "10.9.9.9"]))
    src = draw(st.sampled_from(SOURCES))
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total & 0xFFFF, 1, 0, 64, 17, 0,
                         bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return header + bytes(ihl * 4 - 20) + payload


SOURCES6 = ["fd07:0:0:2::7", "fd07:0:0:3::1", "fd07:0:0:1::9", "2001:db8::1"]


def ipv6_packet(draw, dst=None):
    payload = draw(st.binary(max_size=draw(st.sampled_from([8, 200, 1500]))))
    dst = dst or draw(st.sampled_from(["fd07:0:0:2::7", "fd07:0:0:3::200", "fd07:0:0:1::2", "fd07:0:9::9"]))
    src = draw(st.sampled_from(SOURCES6))
    return struct.pack("!IHBB16s16s", 0x60000000, len(payload), draw(st.sampled_from([17, 6, 44, 0])), 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


@st.composite
def mutated(draw, base):
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 3))):
        choice = draw(st.integers(0, 3))
        if choice == 0 and data:
            data = data[: draw(st.integers(0, len(data)))]
        elif choice == 1 and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif choice == 2:
            data += draw(st.binary(max_size=32))
        elif choice == 3 and len(data) > HEADROOM + 4:
            i = draw(st.sampled_from([0, 4, 6, 8, 13, 20, 21, HEADROOM, HEADROOM + 2, HEADROOM + 3, HEADROOM + 4]))
            if i < len(data):
                data[i] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def datagrams(draw):
    kind = draw(st.sampled_from(["v4", "v4", "v6", "arp", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=120))
    if kind == "v4":
        inner = ipv4_packet(draw, dst="10.5.1.2")
        ethertype = 0x0800
    elif kind == "v6":
        inner = ipv6_packet(draw, dst="fd07:0:0:1::2")
        ethertype = 0x86DD
    else:
        inner = bytes(28)
        ethertype = 0x0806
    flags = draw(st.sampled_from([0x08, 0x08, 0x08, 0x00, 0xFF]))
    vni = draw(st.sampled_from([7, 7, 7, 8]))
    dst = draw(st.sampled_from([OWN_MAC, OWN_MAC, OWN_MAC6, OWN_MAC6, b"\xff" * 6, bytes.fromhex("01005e000001"),
                                bytes.fromhex("020000000099")]))
    src = PEERS["10.5.2.0"][0]
    base = (bytes([flags, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\x00" + dst + src
            + ethertype.to_bytes(2, "big") + inner)
    return draw(st.one_of(st.just(base), mutated(base)))


@st.composite
def tun_packets(draw):
    kind = draw(st.sampled_from(["v4", "v4", "v6", "noise"]))
    if kind == "v4":
        return draw(st.one_of(st.just(ipv4_packet(draw)), mutated(ipv4_packet(draw))))
    if kind == "v6":
        return draw(st.one_of(st.just(ipv6_packet(draw)), mutated(ipv6_packet(draw))))
    return draw(st.binary(max_size=64))


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=6000, **SETTINGS)
@given(st.lists(st.tuples(datagrams(), st.sampled_from(SENDERS)), min_size=1, max_size=4), st.booleans())
def test_decap_equivalent(batch, strict_source):
    results = []
    for codec in codecs(strict_source):
        bufs = [bytearray(d) + bytearray(8) for d, _ in batch]  # spare room past the datagram
        verdicts, inner = [0] * len(batch), [0] * len(batch)
        ok = codec.decap_batch(bufs, [len(d) for d, _ in batch], [s for _, s in batch], len(batch), verdicts, inner)
        results.append((ok, [int(v) for v in verdicts], inner, bufs, codec.drop_counts()))
    assert results[0] == results[1]


@settings(max_examples=4000, **SETTINGS)
@given(st.lists(tun_packets(), min_size=1, max_size=4))
def test_encap_equivalent(packets):
    results = []
    for codec in codecs():
        bufs = [bytearray(HEADROOM) + bytearray(p) for p in packets]
        verdicts, dests = [0] * len(packets), [None] * len(packets)
        ok = codec.encap_batch(bufs, [len(p) for p in packets], len(packets), verdicts, dests)
        results.append((ok, [int(v) for v in verdicts], dests, bufs, codec.drop_counts()))
    assert results[0] == results[1]


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 400), st.integers(1, 40)), max_size=600))
def test_peer_table_churn_equivalent(ops):
    """Many set/remove operations (the C table grows, deletes by backward shift, shares
    sender refcounts): both codecs route and accept exactly alike afterwards."""
    pair = [cls(7, OWN_MAC, 24, MTU, 8472, strict_source=True) for cls in (wire.Codec, compiled_codec())]
    for add, n, host in ops:
        subnet = (10 << 24) | (n << 8)
        for codec in pair:
            if add:
                codec.set_peer(subnet, bytes([2, 0, 0, 0, host, 1]), f"198.18.1.{host}")
            else:
                codec.remove_peer(subnet)
    assert pair[0].peer_count() == pair[1].peer_count()
    for n in range(0, 401, 7):
        packet = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 17, 0, bytes(4), bytes([10, n >> 8, n & 255, 9]))
        assert wire.encap_one(pair[0], packet) == wire.encap_one(pair[1], packet)
    # --strict-source asks the table which VTEP owns the inner source's subnet
    for n in range(0, 401, 13):
        datagram = (bytes([8, 0, 0, 0, 0, 0, 7, 0]) + OWN_MAC + bytes(6) + b"\x08\x00"
                    + bytes([0x45, 0, 0, 20]) + bytes(8) + bytes([10, n >> 8, n & 255, 9]) + bytes(4))
        for host in range(1, 41, 3):
            sender = f"198.18.1.{host}"
            assert wire.decap_one(pair[0], datagram, sender) == wire.decap_one(pair[1], datagram, sender)


@settings(max_examples=200, **SETTINGS)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 400), st.integers(1, 40)), max_size=600))
def test_ipv6_peer_table_churn_equivalent(ops):
    """The same for the IPv6 tables (16-byte keys): route and accept alike after churn."""
    pair = [cls(7, OWN_MAC, 24, MTU, 8472, strict_source=True, vtep_mac6=OWN_MAC6, subnet_len6=64)
            for cls in (wire.Codec, compiled_codec())]
    for add, n, host in ops:
        subnet6 = int(ipaddress.IPv6Address(f"fd07:0:{n:x}:1::"))
        for codec in pair:
            if add:
                codec.set_peer6(subnet6, bytes([2, 0, 0, 6, host, 1]), f"fd00:c612::1:{host:x}")
            else:
                codec.remove_peer6(subnet6)
    for n in range(0, 401, 7):
        packet = struct.pack("!IHBB16s16s", 0x60000000, 0, 17, 64, bytes(16),
                             ipaddress.IPv6Address(f"fd07:0:{n:x}:1::9").packed)
        assert wire.encap_one(pair[0], packet) == wire.encap_one(pair[1], packet)
    for n in range(0, 401, 13):
        inner = struct.pack("!IHBB16s16s", 0x60000000, 0, 17, 64, ipaddress.IPv6Address(f"fd07:0:{n:x}:1::9").packed,
                            bytes(16))
        datagram = bytes([8, 0, 0, 0, 0, 0, 7, 0]) + OWN_MAC6 + bytes(6) + b"\x86\xdd" + inner
        for host in range(1, 41, 3):
            sender = f"fd00:c612::1:{host:x}"
            assert wire.decap_one(pair[0], datagram, sender) == wire.decap_one(pair[1], datagram, sender)
