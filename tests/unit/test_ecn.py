"""ECN across the tunnel (RFC 6040, as the kernel's vxlan device does it): the outer ECN field
on encapsulation, the CE mark carried inward on decapsulation; the reference and the compiled
engine agree on every combination."""

from __future__ import annotations

import itertools
import struct

import pytest

import fastpath
from tests.conftest import compiled_codec
from vxlan import wire
from vxlan.wire import HEADROOM, DropReason

NOT_ECT, ECT1, ECT0, CE = 0, 1, 2, 3
OWN_MAC, PEER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
PEER = "198.18.0.2"


def ipv4(tos: int, dscp: int = 0x28) -> bytes:
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, dscp << 2 | tos, 28, 1, 0, 64, 17, 0,
                                   bytes([10, 5, 2, 7]), bytes([10, 5, 1, 2])))
    header[10:12] = wire.internet_checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + bytes(8)


def ipv6(tos: int) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000 | (0xA0 | tos) << 20, 8, 17, 64, bytes(16), bytes(16)) + bytes(8)


def datagram(inner: bytes) -> bytearray:
    ethertype = b"\x86\xdd" if inner[0] >> 4 == 6 else b"\x08\x00"
    return bytearray(wire.vxlan_header(1) + OWN_MAC + PEER_MAC + ethertype + inner)


@pytest.mark.parametrize("make", [ipv4, ipv6])
def test_outer_ecn_is_the_inner_one_with_ce_sent_as_ect0(make):
    expected = {NOT_ECT: NOT_ECT, ECT1: ECT1, ECT0: ECT0, CE: ECT0}  # INET_ECN_encapsulate
    for inner, outer in expected.items():
        assert wire.ecn_outer(make(inner)) == outer
        assert fastpath.IMPLEMENTATION != "cython" or fastpath._fastpath.ecn_outer(make(inner)) == outer


def test_compiled_and_reference_outer_ecn_agree_on_every_tos_byte():
    ecn_outer = pytest.importorskip("fastpath._fastpath").ecn_outer
    for version, tos in itertools.product((4, 6), range(256)):
        first = bytes([0x45, tos]) if version == 4 else bytes([0x60 | tos >> 4, (tos & 0xF) << 4])
        assert ecn_outer(first) == wire.ecn_outer(first), (version, tos)


def expected_decap(outer: int, inner: int) -> tuple[DropReason, int]:
    """RFC 6040 section 4.2, figure 4, default mode: (verdict, inner ECN forwarded)."""
    if outer != CE:
        return DropReason.OK, inner
    return (DropReason.CE_NOT_ECT, inner) if inner == NOT_ECT else (DropReason.OK, CE)


@pytest.mark.parametrize("make", [ipv4, ipv6])
def test_reference_decapsulation_follows_rfc6040(make):
    for outer, inner in itertools.product(range(4), repeat=2):
        buf = bytearray(make(inner))
        verdict = wire.ecn_decapsulate(buf, 0, len(buf), 0xB8 | outer)  # DSCP on the outer header: ignored
        want, ecn = expected_decap(outer, inner)
        assert verdict == want, (outer, inner)
        if make is ipv4:
            assert buf[1] == 0x28 << 2 | ecn  # the inner DSCP is kept
            assert wire.internet_checksum(bytes(buf[:20])) == 0  # the header checksum still holds
        else:
            assert (buf[1] >> 4) & 3 == ecn and buf[0] == 0x6A


def test_compiled_decap_batch_marks_and_drops_as_the_reference():
    codecs = [cls(1, OWN_MAC, 24, 1450, 8472) for cls in (wire.Codec, compiled_codec())]
    for codec in codecs:
        codec.set_peer(wire.ipv4_to_int("10.5.2.0"), PEER_MAC, PEER)
    cases = list(itertools.product(range(4), range(4)))  # (outer, inner), IPv4 inner packets
    results = []
    for codec in codecs:
        bufs = [datagram(ipv4(inner)) for _, inner in cases]
        verdicts, inner_lengths = [0] * len(cases), [0] * len(cases)
        ok = codec.decap_batch(bufs, [len(b) for b in bufs], [PEER] * len(cases), len(cases), verdicts,
                               inner_lengths, [0xB8 | outer for outer, _ in cases])
        results.append((ok, verdicts, [bytes(b) for b in bufs], codec.drop_counts()[DropReason.CE_NOT_ECT]))
    assert results[0] == results[1]
    ok, verdicts, bufs, ce_drops = results[1]
    assert ce_drops == 1 and ok == len(cases) - 1
    for (outer, inner), verdict, buf in zip(cases, verdicts, bufs, strict=True):
        want, ecn = expected_decap(outer, inner)
        assert verdict == want and buf[HEADROOM + 1] & 3 == ecn


def test_without_the_outer_tos_nothing_changes():
    codec = compiled_codec()(1, OWN_MAC, 24, 1450, 8472)
    codec.set_peer(wire.ipv4_to_int("10.5.2.0"), PEER_MAC, PEER)
    buf = datagram(ipv4(NOT_ECT))
    verdicts, inner = [0], [0]
    assert codec.decap_batch([buf], [len(buf)], [PEER], 1, verdicts, inner) == 1  # a caller that knows no outer TOS
    assert bytes(buf) == bytes(datagram(ipv4(NOT_ECT)))


def test_the_drop_reason_is_an_underlay_one():
    assert DropReason.CE_NOT_ECT.label == "ce_not_ect" and DropReason.CE_NOT_ECT.side == "underlay"
