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


# -- the IPv6 underlay (a dual-stack node's second packet socket) ------------------------------

def frame6(**ip_fields) -> bytearray:
    from scapy.layers.inet6 import IPv6

    pkt = Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02") / IPv6(src="fd00:c612::2", dst="fd00:c612::1",
                                                                         **ip_fields) / UDP(sport=40000, dport=8472)
    return bytearray(bytes(pkt / PAYLOAD))


def test_an_ipv6_frame_gives_its_sender_and_datagram():
    v, sender, off, length = _fastpath.frame_outer(bytes(frame6()))
    assert (v, sender, off, length) == (DropReason.OK, "fd00:c612::2", 14 + 40 + 8, len(PAYLOAD))
    assert _fastpath.frame_outer(bytes(frame6() + b"\0" * 10))[3] == len(PAYLOAD)  # padding cut


def test_ipv6_checksums_are_checked_and_zero_is_refused():
    data = frame6()
    data[14 + 40 + 6] ^= 0x55
    assert verdict(data) == DropReason.BAD_OUTER
    assert verdict(data, flags=DATA_VALID) == DropReason.OK
    assert verdict(data, flags=NEEDS_CSUM) == DropReason.OK
    # RFC 8200: over IPv6 a zero UDP checksum is no checksum at all; a kernel vxlan device
    # refuses it (noudp6zerocsumrx, RFC 6935), and so does vxland
    data[14 + 40 + 6: 14 + 40 + 8] = b"\x00\x00"
    assert verdict(data, flags=DATA_VALID) == DropReason.BAD_OUTER


def test_ipv6_extension_headers_and_lies_are_refused():
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment

    frag = Ether() / IPv6(src="fd00:c612::2", dst="fd00:c612::1") / IPv6ExtHdrFragment() / UDP(dport=8472) / PAYLOAD
    assert verdict(bytes(frag)) == DropReason.BAD_OUTER
    data = frame6()
    struct.pack_into("!H", data, 14 + 4, 40 + 8 + len(PAYLOAD) + 1)  # payload length beyond the frame
    assert verdict(data) == DropReason.BAD_OUTER
    data = frame6()
    data[12:14] = b"\x08\x00"  # an IPv6 header behind an IPv4 ethertype
    assert verdict(data) == DropReason.BAD_OUTER
    assert verdict(frame6()[:14 + 40 + 4]) == DropReason.BAD_OUTER  # no whole UDP header


def test_the_ipv6_frame_filter_program():
    """The classic BPF program of the IPv6 packet socket, run by a small interpreter: UDP to
    the address and port only."""
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrHopByHop

    from vxlan.dataplane import vxlan6_frame_filter

    program = vxlan6_frame_filter("fd00:c612::1", 8472)

    def run(packet: bytes) -> bool:  # packet from its network header (SKF_NET_OFF)
        acc, pc = 0, 0
        while True:
            code, jt, jf, k = program[pc]
            off = (k - (-0x100000 & 0xFFFFFFFF)) if k >= 0x80000000 else k
            if code == 0x30:
                acc = packet[off] if off < len(packet) else None
            elif code == 0x28:
                acc = int.from_bytes(packet[off:off + 2], "big") if off + 2 <= len(packet) else None
            elif code == 0x20:
                acc = int.from_bytes(packet[off:off + 4], "big") if off + 4 <= len(packet) else None
            elif code == 0x15:
                pc += 1 + (jt if acc == k else jf)
                continue
            elif code == 0x06:
                return k != 0
            if acc is None:
                return False  # a load past the end ends the program with 0
            pc += 1

    def udp6(dst="fd00:c612::1", dport=8472, ext=False):
        ip = IPv6(src="fd00:c612::2", dst=dst)
        return bytes((ip / IPv6ExtHdrHopByHop() if ext else ip) / UDP(sport=1, dport=dport) / PAYLOAD)

    assert run(udp6())
    assert not run(udp6(dst="fd00:c612::3")) and not run(udp6(dport=4789)) and not run(udp6(ext=True))
