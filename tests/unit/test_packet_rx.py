"""The outer checks of frames read from the packet socket (fastpath/vx_rx_packet.c): what the
kernel's IP and UDP layers would have refused is dropped as bad_outer, what they would have
passed is taken, and the kernel's word on a checksum (NEEDS_CSUM, DATA_VALID) is honoured."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vxlan.wire import DropReason

_fastpath = pytest.importorskip("fastpath._fastpath", reason="needs the compiled extension")

NEEDS_CSUM, DATA_VALID = 1, 2
PAYLOAD = bytes(range(64))  # stands for a VXLAN datagram: only the outer headers matter here


def frame(**ip_fields) -> bytearray:
    pkt = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IP(src="198.18.0.2", dst="198.18.0.1",
                                                                       **ip_fields) / UDP(sport=40000, dport=8472)
    return bytearray(bytes(pkt / PAYLOAD))


def verdict(data: bytes, flags: int = 0, gso_type: int = 0) -> int:
    return _fastpath.frame_outer(bytes(data), flags, gso_type)[0]


def test_a_good_frame_gives_its_sender_and_datagram():
    v, sender, off, length = _fastpath.frame_outer(bytes(frame()))
    assert (v, sender, off, length) == (DropReason.OK, "198.18.0.2", 14 + 20 + 8, len(PAYLOAD))


def test_ethernet_padding_is_cut_by_the_ip_length():
    data = frame() + b"\x00" * 10
    assert _fastpath.frame_outer(bytes(data))[3] == len(PAYLOAD)


def test_a_wrong_udp_checksum_is_dropped_unless_the_kernel_vouches():
    data = frame()
    data[14 + 20 + 6] ^= 0x55
    assert verdict(data) == DropReason.BAD_OUTER
    assert verdict(data, flags=DATA_VALID) == DropReason.OK  # the NIC (or kernel) verified it
    assert verdict(data, flags=NEEDS_CSUM) == DropReason.OK  # left partial on this host
    data[14 + 20 + 6: 14 + 20 + 8] = b"\x00\x00"  # RFC 768: no checksum
    assert verdict(data) == DropReason.OK


def test_a_wrong_ip_header_checksum_is_dropped():
    data = frame()
    data[14 + 10] ^= 0xFF
    assert verdict(data, flags=DATA_VALID) == DropReason.BAD_OUTER


@pytest.mark.parametrize("flags_frag", [0x2000, 0x0001, 0x2005], ids=["first", "last", "middle"])
def test_outer_fragments_are_dropped(flags_frag):
    data = frame()
    struct.pack_into("!H", data, 14 + 6, flags_frag)
    struct.pack_into("!H", data, 14 + 10, 0)
    # fix the IP header checksum, so that only the fragment bits are wrong
    words = struct.unpack("!10H", bytes(data[14:34]))
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", data, 14 + 10, ~total & 0xFFFF)
    assert verdict(data, flags=DATA_VALID) == DropReason.BAD_OUTER


@pytest.mark.parametrize("cut", [0, 13, 14 + 19, 14 + 27])
def test_truncated_frames_are_dropped(cut):
    assert verdict(frame()[:cut]) == DropReason.BAD_OUTER


def test_udp_length_beyond_the_packet_is_dropped():
    data = frame()
    struct.pack_into("!H", data, 14 + 20 + 4, 8 + len(PAYLOAD) + 1)
    assert verdict(data, flags=DATA_VALID) == DropReason.BAD_OUTER


def test_not_udp_or_not_ipv4_is_dropped():
    data = frame()
    data[12:14] = b"\x86\xdd"
    assert verdict(data) == DropReason.BAD_OUTER


def test_a_super_packet_is_taken_whole():
    """A GSO frame's IP total length may say 0 (past 64 KB): what was read counts."""
    data = frame()
    struct.pack_into("!H", data, 14 + 20 + 4, 0)  # the UDP length of a super-packet is not checked
    v, _, off, length = _fastpath.frame_outer(bytes(data), NEEDS_CSUM, 1)
    assert v == DropReason.OK and length == len(data) - off


def test_frames_of_an_l3_device_have_no_link_header():
    """WireGuard or a TUN as the underlay: the frame starts at the IP header."""
    data = bytes(frame()[14:])
    v, sender, off, length = _fastpath.frame_outer(data, link_len=0)
    assert (v, sender, off, length) == (DropReason.OK, "198.18.0.2", 20 + 8, len(PAYLOAD))
    assert _fastpath.frame_outer(bytes(frame()), link_len=0)[0] == DropReason.BAD_OUTER  # Ethernet read as IP
