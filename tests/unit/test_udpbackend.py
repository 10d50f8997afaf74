"""flannel's udp backend rules (pkg/backend/udp/proxy_amd64.c): TTL, checksums, ICMP."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.offload_ref import checksum
from vxlan.udpbackend import UdpCodec, decrement_ttl, net_unreachable
from vxlan.wire import DropReason


def ip_packet(src="10.5.1.2", dst="10.5.2.2", ttl=64, proto=17, payload=b"x" * 20, frag=0) -> bytearray:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, frag, ttl, proto, 0,
                                ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed))
    hdr[10:12] = struct.pack("!H", ~checksum(bytes(hdr)) & 0xFFFF)
    return hdr + payload


@given(st.integers(2, 255), st.binary(min_size=8, max_size=8))
def test_ttl_decrement_keeps_the_header_checksum_valid(ttl, ident):
    pkt = ip_packet(ttl=ttl)
    pkt[4:6] = ident[:2]
    pkt[10:12] = b"\0\0"
    pkt[10:12] = struct.pack("!H", ~checksum(bytes(pkt[:20])) & 0xFFFF)
    assert decrement_ttl(pkt)
    assert pkt[8] == ttl - 1
    assert checksum(bytes(pkt[:20])) == 0xFFFF  # a valid header sums to all ones


def test_ttl_one_is_dropped_both_ways():
    codec = UdpCodec(ipaddress.IPv4Address("10.5.1.0"), 24, 8285)
    codec.set_peer(int(ipaddress.IPv4Address("10.5.2.0")), None, "192.0.2.2")
    bufs, verdicts, aux, inner = [ip_packet(ttl=1), ip_packet(ttl=5)], [0, 0], [None, None], [0, 0]
    assert codec.encap_batch(bufs, [40, 40], 2, verdicts, aux)
    assert verdicts == [DropReason.TTL_EXPIRED, 0] and aux[1] == ("192.0.2.2", 8285) and bufs[1][8] == 4
    assert not codec.decap_batch([ip_packet(ttl=1)], [40], ["192.0.2.2"], 1, verdicts, inner)
    assert verdicts[0] == DropReason.TTL_EXPIRED
    assert codec.drop_counts()[DropReason.TTL_EXPIRED] == 2


def test_no_route_answers_icmp_net_unreachable_into_the_tun():
    codec = UdpCodec(ipaddress.IPv4Address("10.5.1.0"), 24, 8285)
    pkt = ip_packet(dst="10.5.9.9")
    verdicts, aux = [0], [None]
    assert not codec.encap_batch([pkt], [40], 1, verdicts, aux)
    assert verdicts == [DropReason.NO_ROUTE] and len(codec.pending_tun) == 1
    reply = codec.pending_tun[0]
    assert checksum(reply[:20]) == 0xFFFF and checksum(reply[20:]) == 0xFFFF
    assert reply[9] == 1 and reply[20:22] == b"\x03\x00" and reply[8] == 8
    assert reply[12:16] == bytes([10, 5, 1, 0]) and reply[16:20] == bytes([10, 5, 1, 2])
    assert reply[28:] == bytes(pkt[:28])  # the offender's header and 8 bytes of its payload


def test_no_icmp_about_icmp_or_later_fragments():
    src = bytes([10, 5, 1, 0])
    assert net_unreachable(bytes(ip_packet(proto=1)), src) is None
    assert net_unreachable(bytes(ip_packet(frag=5)), src) is None


def test_decap_takes_the_ip_total_length():
    codec = UdpCodec(ipaddress.IPv4Address("10.5.1.0"), 24, 8285)
    pkt = ip_packet() + b"trailing"
    verdicts, inner = [0], [0]
    assert codec.decap_batch([pkt], [len(pkt)], ["192.0.2.9"], 1, verdicts, inner)
    assert verdicts == [0] and inner == [40]
