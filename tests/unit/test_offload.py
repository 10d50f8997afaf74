"""The C offload code (checksum, TSO split, GRO coalescing) against slow references, on
hypothesis-generated packets and segment trains: out of order, mixed flows, odd sizes, bad
checksums."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import compiled_codec
from tests.unit import offload_ref as ref

compiled_codec()  # fail, not skip, without the build
from fastpath import _fastpath as fp  # noqa: E402

SRC, DST = bytes([172, 7, 1, 2]), bytes([172, 7, 2, 2])
TS_OPTION = b"\x01\x01\x08\x0a" + bytes(range(8))  # NOP NOP timestamps
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=2000, **SETTINGS)
@given(st.binary(max_size=3000))
def test_checksum_matches_reference(data):
    assert fp.checksum(data) == ref.checksum(data)
    assert fp.checksum(data, portable=True) == ref.checksum(data)


@pytest.mark.parametrize("size", [127, 128, 129, 191, 1450, 65535, 65536, 200_000])
@pytest.mark.parametrize("fill", [0x00, 0xFF, 0x80])
def test_checksum_extremes(size, fill):
    """Lengths around the vector loop's edges, and all-ones words, which carry the most."""
    data = bytes([fill]) * size
    assert fp.checksum(data) == fp.checksum(data, portable=True) == ref.checksum(data)


@settings(max_examples=300, **SETTINGS)
@given(st.binary(min_size=1, max_size=2000), st.integers(0, 2000))
def test_checksum_odd_offsets(data, cut):
    """Sums of odd-length pieces are what the split and coalesce code feed it."""
    cut = min(cut, len(data))
    assert fp.checksum(data[cut:]) == ref.checksum(data[cut:])


@st.composite
def super_packets(draw):
    mss = draw(st.sampled_from([536, 1000, 1398, 1410, draw(st.integers(200, 1460))]))
    size = draw(st.integers(0, min(64000, mss * 60)))
    payload = draw(st.binary(min_size=size, max_size=size)) if size < 200 else bytes(
        (i * 7 + draw(st.integers(0, 255))) & 0xFF for i in range(size))
    flags = 0x10 | draw(st.sampled_from([0, 0x08, 0x01 | 0x08, 0x80, 0x80 | 0x08]))
    options = draw(st.sampled_from([b"", TS_OPTION]))
    seq = draw(st.integers(0, 0xFFFFFFFF))
    ident = draw(st.integers(0, 0xFFFF))
    return ref.tcp_packet(SRC, DST, 40000, 5201, seq, 12345, flags, payload, options, ident=ident), mss


@settings(max_examples=400, **SETTINGS)
@given(super_packets())
def test_tso_split_matches_reference(case):
    packet, mss = case
    segments = fp.gso_split(packet, mss)
    assert segments == ref.split(packet, mss)
    assert all(ref.valid(s) for s in segments)
    assert b"".join(ref.parse(s)["payload"] for s in segments) == ref.parse(packet)["payload"]


def _guess(kind, hlen, mss):
    """The (header length, MSS) a TX read is laid out for: the packet's own, or another's."""
    return {"right": (hlen, mss), "other_mss": (hlen, 1398 if mss != 1398 else 1000),
            "other_hlen": (hlen + 12, mss), "plain": (0, 0)}[kind]


@settings(max_examples=400, **SETTINGS)
@given(super_packets(), st.sampled_from(["right", "other_mss", "other_hlen", "plain"]))
def test_split_of_a_scattered_read_matches_reference(case, kind):
    """The TX loop reads a super-packet already cut for the last one's shape; whatever the
    guess, the segments are the reference split's, and only the right guess splits in place."""
    packet, mss = case
    hlen = 20 + (packet[32] >> 4) * 4
    g_hlen, g_mss = _guess(kind, hlen, mss) if mss >= 256 else (0, 0)
    segments, inplace = fp.gso_split_read(packet, mss, g_hlen, g_mss)
    assert segments == ref.split(packet, mss)
    assert inplace == (g_mss > 0 and kind == "right" and len(packet) > hlen + mss)


@settings(max_examples=200, **SETTINGS)
@given(st.integers(256, 1472), st.integers(0, 60000), st.sampled_from(["right", "other_mss", "plain"]))
def test_udp_split_of_a_scattered_read_matches_reference(size, total, kind):
    total = min(total, size * 200)
    packet = ref.udp_packet(SRC, DST, 4433, 443, bytes(i * 13 & 0xFF for i in range(total)))
    segments, inplace = fp.gso_split_read(packet, size, *_guess(kind, 28, size))
    assert segments == ref.udp_split(packet, size)
    assert inplace == (kind == "right" and len(packet) > 28 + size)


@settings(max_examples=300, **SETTINGS)
@given(st.integers(0, 65535), st.integers(20, 120), st.integers(256, 9000), st.integers(0, 255))
def test_scattered_read_compacts_back_to_the_packet(size, hlen, mss, seed):
    data = bytes((i * 31 + seed) & 0xFF for i in range(size))
    assert fp.scatter_roundtrip(data, hlen, mss) == data


def test_tso_split_refuses_what_it_cannot_split():
    for bad in (b"", b"\x45" + bytes(30), b"\x60" + bytes(60)):
        for split in (lambda b: fp.gso_split(b, 1000), lambda b: fp.gso_split_read(b, 1000, 40, 1000)):
            try:
                split(bad)
            except ValueError:
                continue
            raise AssertionError(f"split {bad!r}")


def flow(sport, seq, sizes, options=TS_OPTION, psh_last=True):
    """Segments of one flow as a TSO split would make them (equal sizes but the last)."""
    out, ident = [], 100
    for i, size in enumerate(sizes):
        flags = 0x10 | (0x08 if psh_last and i == len(sizes) - 1 else 0)
        payload = bytes((seq + j) & 0xFF for j in range(size))
        out.append(ref.tcp_packet(SRC, DST, sport, 5201, seq, 777, flags, payload, options, ident=ident + i))
        seq += size
    return out


@st.composite
def trains(draw):
    """Mixed flows, sometimes shuffled, odd sizes, corrupted checksums, non-TCP packets."""
    packets = []
    for f in range(draw(st.integers(1, 3))):
        mss = draw(st.sampled_from([1398, 1000, draw(st.integers(1, 1400))]))
        n = draw(st.integers(1, 40))
        sizes = [mss] * (n - 1) + [draw(st.integers(1, mss))]
        packets.append(flow(40000 + f, draw(st.integers(0, 0xFFFFFFFF)), sizes,
                            options=draw(st.sampled_from([b"", TS_OPTION]))))
    mixed = [p for pair in zip(*packets, strict=False) for p in pair] if draw(st.booleans()) else sum(packets, [])
    # leftovers of unequal flows
    longest = max(len(p) for p in packets)
    if len(mixed) < sum(len(p) for p in packets):
        mixed += [p[i] for p in packets for i in range(longest) if i >= min(len(q) for q in packets) and i < len(p)]
    mixed = list(dict.fromkeys(mixed))
    if draw(st.booleans()):
        mixed = draw(st.permutations(mixed))
    corrupt = set(draw(st.lists(st.integers(0, len(mixed) - 1), max_size=3)))
    out = []
    for i, p in enumerate(mixed):
        if i in corrupt:
            j = len(p) - 1
            p = p[:j] + bytes([p[j] ^ 0x5A]) + p[j + 1:]  # payload byte: TCP checksum now wrong
        out.append(p)
    if draw(st.booleans()):
        out.insert(draw(st.integers(0, len(out))), bytes.fromhex("4500001c000100004011") + bytes(18))  # UDP-ish
    return out


def unpack_vnet(hdr: bytes) -> tuple[int, int, int, int, int, int]:
    return struct.unpack("<BBHHHH", hdr)


@settings(max_examples=500, **SETTINGS)
@given(trains())
def test_gro_coalesce(packets):
    written = fp.gro_coalesce(packets)
    assert sum(count for _, _, count in written) == len(packets)
    expanded = []
    for hdr, pkt, count in written:
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = unpack_vnet(hdr)
        if count == 1:
            assert hdr == bytes(10)  # passed on as received: the kernel checks it itself
            assert pkt in packets
            expanded.append(pkt)
            continue
        assert (flags, gso_type, csum_start, csum_offset) == (1, 1, 20, 16)
        p = ref.parse(pkt)
        assert hdr_len == 20 + p["thl"] and len(pkt) <= 65535
        whole = ref.finish_partial(pkt, csum_start, csum_offset)
        assert ref.valid(whole)
        segments = ref.split(whole, gso_size)
        assert len(segments) == count
        expanded.extend(segments)
    # Nothing lost, duplicated or reordered within a flow; every coalesced segment was valid.
    def key(pkt):
        p = ref.parse(pkt)
        return (p["sport"], p["seq"], p["payload"])
    for sport in {ref.parse(p)["sport"] for p in packets if p[9] == 6}:
        sent = [key(p) for p in packets if p[9] == 6 and ref.parse(p)["sport"] == sport]
        got = [key(p) for p in expanded if p[9] == 6 and ref.parse(p)["sport"] == sport]
        assert got == sent
    for hdr, pkt, count in written:
        if count > 1:
            assert all(ref.valid(s) for s in ref.split(ref.finish_partial(pkt, 20, 16), unpack_vnet(hdr)[3]))


def test_gro_in_order_train_becomes_one_packet():
    segments = flow(40000, 1000, [1398] * 20 + [500])
    written = fp.gro_coalesce(segments)
    assert [count for _, _, count in written] == [21]
    hdr, pkt, _ = written[0]
    assert unpack_vnet(hdr)[3] == 1398 and len(pkt) == 20 + 32 + 1398 * 20 + 500


def test_gro_never_coalesces_a_corrupt_segment():
    segments = flow(40000, 1000, [1398] * 5)
    bad = segments[2][:-1] + bytes([segments[2][-1] ^ 1])
    written = fp.gro_coalesce(segments[:2] + [bad] + segments[3:])
    assert [c for _, _, c in written] == [2, 1, 2]
    assert written[1] == (bytes(10), bad, 1)


@settings(max_examples=300, **SETTINGS)
@given(st.integers(1, 1472), st.integers(0, 60000), st.integers(0, 0xFFFF))
def test_udp_split_matches_reference(size, total, ident):
    total = min(total, size * 200)
    packet = ref.udp_packet(SRC, DST, 4433, 443, bytes(i & 0xFF for i in range(total)), ident=ident)
    segments = fp.gso_split(packet, size)
    assert segments == ref.udp_split(packet, size)
    assert all(ref.udp_valid(s) for s in segments)


@st.composite
def udp_trains(draw):
    size = draw(st.integers(1, 1400))
    flows = []
    for f in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 30))
        sizes = [size] * (n - 1) + [draw(st.integers(1, size))]
        flows.append([ref.udp_packet(SRC, DST, 5000 + f, 443, bytes([f, k % 256]) * (s // 2) + b"x" * (s % 2),
                                     ident=k) for k, s in enumerate(sizes)])
    packets = sum(flows, []) if draw(st.booleans()) else [p for t in zip(*flows, strict=False) for p in t]
    packets = list(dict.fromkeys(packets))
    bad = draw(st.sets(st.integers(0, len(packets) - 1), max_size=2))
    return [p[:-1] + bytes([p[-1] ^ 0x33]) if i in bad else p for i, p in enumerate(packets)]


@settings(max_examples=400, **SETTINGS)
@given(udp_trains())
def test_udp_gro_keeps_every_datagram(packets):
    written = fp.gro_coalesce(packets, udp=True)
    expanded = []
    for hdr, pkt, count in written:
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = unpack_vnet(hdr)
        if count == 1:
            assert hdr == bytes(10) and pkt in packets
            expanded.append(pkt)
            continue
        assert (flags, gso_type, hdr_len, csum_start, csum_offset) == (1, 5, 28, 20, 6)
        whole = ref.finish_partial(pkt, 20, 6)
        assert ref.udp_valid(whole)
        pieces = ref.udp_split(whole, gso_size)
        assert len(pieces) == count and all(ref.udp_valid(p) for p in pieces)
        expanded.extend(pieces)
    # per flow, the datagram payloads arrive complete and in order; corrupt ones were not merged
    for sport in {struct.unpack("!H", p[20:22])[0] for p in packets}:
        sent = [p[28:] for p in packets if struct.unpack("!H", p[20:22])[0] == sport]
        got = [p[28:] for p in expanded if struct.unpack("!H", p[20:22])[0] == sport]
        assert got == sent
    corrupt = [p for p in packets if not ref.udp_valid(p)]
    assert all((bytes(10), p, 1) in written for p in corrupt)


def test_udp_is_not_coalesced_without_uso():
    packets = [ref.udp_packet(SRC, DST, 5000, 443, b"a" * 64, ident=i) for i in range(10)]
    assert [c for _, _, c in fp.gro_coalesce(packets)] == [1] * 10
    assert [c for _, _, c in fp.gro_coalesce(packets, udp=True)] == [10]


@settings(max_examples=200, **SETTINGS)
@given(st.integers(200, 1440), st.integers(0, 30000), st.sampled_from([0x10, 0x18, 0x19, 0x90]),
       st.sampled_from([b"", TS_OPTION]), st.integers(0, 0xFFFFF), st.booleans())
def test_ipv6_splits_as_ipv6_gso_segment(mss, size, flags, options, label, udp):
    """An IPv6 TCP (TSO6) or UDP super-packet: each segment is what scapy builds for its piece
    (payload length set, no IP checksum, the TCP/UDP checksum over the IPv6 pseudo-header of
    RFC 8200 section 8.1; sequence numbers advance; FIN and PSH on the last, CWR on the first)."""
    from scapy.layers.inet import TCP, UDP
    from scapy.layers.inet6 import IPv6

    payload = bytes((i * 11 + 5) & 0xFF for i in range(size))
    ip = IPv6(src="fd07:0:0:1::2", dst="fd07:0:0:2::2", fl=label, hlim=63)
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (0x00010203, 0x04050607))] if options else []
    l4 = UDP(sport=4433, dport=443) if udp else TCP(sport=40000, dport=5201, seq=7, ack=9, flags=flags, options=opts)
    packet = bytes(ip / l4 / payload)
    segments, _ = fp.gso_split_read(packet, mss, 0, 0)
    hlen = len(packet) - len(payload)
    if mss >= 256:  # (below, the TX loop reads plainly: vx_scatter_iov's limit)
        scattered, inplace = fp.gso_split_read(packet, mss, hlen, mss)  # read laid out for this shape
        assert scattered == segments and inplace == (len(packet) > hlen + mss)
    pieces = [payload[i:i + mss] for i in range(0, len(payload), mss)] or [b""]
    assert len(segments) == len(pieces)
    for k, piece in enumerate(pieces):
        if udp:
            want = ip / UDP(sport=4433, dport=443) / piece
        else:
            f = flags & ~(0x01 | 0x08) if k != len(pieces) - 1 else flags
            f = f & ~0x80 if k else f
            want = ip / TCP(sport=40000, dport=5201, seq=7 + k * mss, ack=9, flags=f, options=opts) / piece
        assert segments[k] == bytes(want)


def _ipv6_train(mss: int, sizes: list[int], seq: int = 1000, label: int = 0x12345, hlim: int = 63,
                psh_last: bool = True) -> list[bytes]:
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6

    out = []
    for i, size in enumerate(sizes):
        flags = 0x10 | (0x08 if psh_last and i == len(sizes) - 1 else 0)
        out.append(bytes(IPv6(src="fd07:0:0:2::2", dst="fd07:0:0:1::2", fl=label, hlim=hlim)
                         / TCP(sport=5201, dport=40000, seq=seq, ack=77, flags=flags, window=500)
                         / bytes((seq + j) & 0xFF for j in range(size))))
        seq += size
    return out


@settings(max_examples=200, **SETTINGS)
@given(st.integers(200, 1400), st.integers(1, 40), st.integers(0, 1399))
def test_ipv6_gro_coalesces_a_train_that_splits_back(mss, count, last):
    """In-order IPv6 TCP segments of one flow become one TSO6 super-packet (vnet header
    NEEDS_CSUM, gso_type TCPV6, csum_start 40), whose split gives the segments back byte for byte."""
    sizes = [mss] * count + ([min(last, mss)] if last else [])
    train = _ipv6_train(mss, sizes)
    out = fp.gro_coalesce(train)
    if len(train) == 1:
        assert out == [(bytes(10), train[0], 1)]
        return
    assert len(out) == 1
    vh, packet, segs = out[0]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("=BBHHHH", vh)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 4, 60, mss, 40, 16)
    assert segs == len(train) and struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40
    # finish the partial checksum as the kernel would, then split: the train again
    whole = bytearray(packet)
    struct.pack_into("!H", whole, 56, ~ref.checksum(bytes(whole[40:])) & 0xFFFF)  # the field holds the pseudo sum
    assert fp.gso_split(bytes(whole), mss) == train


def test_ipv6_gro_keeps_flows_and_labels_apart():
    a = _ipv6_train(1000, [1000, 1000])
    other_label = _ipv6_train(1000, [1000], seq=3000, label=7)
    other_hlim = _ipv6_train(1000, [1000], seq=3000, hlim=62)
    a_open = _ipv6_train(1000, [1000, 1000], psh_last=False)  # no PSH: the train stays open
    for tail in (other_label, other_hlim):
        out = fp.gro_coalesce(a_open + tail)
        assert [segs for _, _, segs in out] == [2, 1]  # the third segment is of another flow label / hop limit
    with_ext = bytearray(a[0])
    with_ext[6] = 0  # a hop-by-hop header claimed: not coalesced, passed on as it came
    assert fp.gro_coalesce([bytes(with_ext), a[1]]) == [(bytes(10), bytes(with_ext), 1), (bytes(10), a[1], 1)]
