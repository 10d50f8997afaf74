"""The UDP tunnel GSO frame header (fastpath/vx_tunnel.c) and the redirect program
(vxlan/tunnel_tx.py), without root. The known answer is the kernel's own: the tunnel-gso
probe (../shared/tools/probes/tunnel-gso, Linux 6.18) read a kernel vxlan device's UDP super-packet
with the header 09 25 4e00 7805 4600 0600 ... 1400 3200 from an L3 TUN; written into a TAP,
every offset grows by the 14-byte Ethernet header."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from fastpath import _fastpath as fp
from vxlan import tunnel_tx

TAP_MAC = bytes.fromhex("0a0000000001")
VTEP_MAC = bytes.fromhex("0a00000000ff")


def inner_super(proto: int, payload: int, ihl_words: int = 5) -> bytes:
    """An IPv4 TCP (6) or UDP (17) super-packet as the TUN hands it: total length whole, L4
    checksum holding the pseudo-header sum (partial)."""
    options = b"\x01" * (4 * (ihl_words - 5))
    l4 = (struct.pack("!HHIIBBHHH", 40000, 5201, 1, 0, 5 << 4, 0x18, 64240, 0x1234, 0) if proto == 6
          else struct.pack("!HHHH", 40000, 9999, 8 + payload, 0x1234))
    total = 4 * ihl_words + len(l4) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl_words, 0, total, 7, 0x4000, 64, proto, 0,
                     bytes([10, 5, 1, 2]), bytes([10, 5, 2, 2])) + options
    return ip + l4 + b"z" * payload


def header(pkt: bytes, gso_type: int, gso_size: int = 1400, csum_offset: int = 16, **kw):
    ihl = (pkt[0] & 0x0F) * 4
    return fp.tunnel_header(pkt, gso_type, gso_size, kw.pop("csum_start", ihl), csum_offset, TAP_MAC, VTEP_MAC,
                            "192.168.1.1", 8472, "192.168.1.2", 8472, **kw)


def csum_ok(data: bytes) -> bool:
    return fp.checksum(data) == 0xFFFF


def test_udp_super_packet_header_matches_the_kernels():
    pkt = inner_super(17, 60000)
    hdr, segs = header(pkt, 5, csum_offset=6)
    assert segs == 43  # 60,000 bytes of payload in segments of 1,400
    # the probe's header with each offset + 14, and flags NEEDS_CSUM alone: the outer UDP
    # checksum is left 0 (a kernel vxlan device's default over IPv4), not partial (0x08)
    assert hdr[:10] == bytes.fromhex("01 25 5c00 7805 5400 0600".replace(" ", ""))
    assert hdr[10:20] == bytes(10)
    assert struct.unpack("<HH", hdr[20:24]) == (34, 64)


def test_tcp_super_packet_frame():
    pkt = inner_super(6, 30000)
    hdr, segs = header(pkt, 1, gso_size=1398, ip_id=0xFFFF)
    assert segs == 22
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", hdr[:10])
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == (1, 0x21, 64 + 40, 1398, 84, 16)
    eth, ip, udp = hdr[24:38], hdr[38:58], hdr[58:66]
    assert eth == TAP_MAC + VTEP_MAC + b"\x08\x00"
    assert csum_ok(ip)
    version_ihl, _, total, ident, frag, ttl, proto = struct.unpack("!BBHHHBB", ip[:10])
    assert (version_ihl, total, ident, frag, ttl, proto) == (0x45, 20 + 8 + 22 + len(pkt), 0xFFFF, 0, 64, 17)
    assert ipaddress.IPv4Address(ip[12:16]) == ipaddress.IPv4Address("192.168.1.1")
    assert ipaddress.IPv4Address(ip[16:20]) == ipaddress.IPv4Address("192.168.1.2")
    assert struct.unpack("!HHHH", udp) == (8472, 8472, 8 + 22 + len(pkt), 0)


def test_ecn_flag_and_ip_options_are_carried():
    pkt = inner_super(6, 5000, ihl_words=6)
    hdr, segs = header(pkt, 0x81)
    assert segs == 4
    assert hdr[1] == 0xA1  # UDP_TUNNEL_IPV4 | ECN | TCPV4
    assert struct.unpack("<HH", hdr[2:4] + hdr[6:8]) == (64 + 24 + 20, 64 + 24)


@pytest.mark.parametrize("case", ["no partial checksum", "type and protocol differ", "checksum elsewhere",
                                  "too long for IPv4", "IPv6"])
def test_what_cannot_go_as_one_frame(case):
    pkt, kw, gso_type = inner_super(6, 30000), {}, 1
    if case == "no partial checksum":
        kw["flags"] = 0
    elif case == "type and protocol differ":
        gso_type = 5
    elif case == "checksum elsewhere":
        kw["csum_start"] = 0
    elif case == "too long for IPv4":
        pkt = inner_super(6, 65535 - 40 - 49)  # outer length 65,536
    else:
        pkt = b"\x60" + pkt[1:]
    assert header(pkt, gso_type, **kw) == (None, -1)
    if case == "too long for IPv4":
        assert header(inner_super(6, 65535 - 40 - 50), 1)[1] > 0  # one byte less fits


def test_redirect_program():
    prog = tunnel_tx.redirect_program(7)
    insns = [struct.unpack("<BBhi", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    assert insns == [(0xB7, 1, 0, 7), (0xB7, 2, 0, 0), (0xB7, 3, 0, 0), (0xB7, 4, 0, 0),
                     (0x85, 0, 0, tunnel_tx.BPF_FUNC_REDIRECT_NEIGH), (0x95, 0, 0, 0)]
