"""Slow, obviously correct references for the C offload code (tests only).

checksum: RFC 1071 over big-endian 16-bit words. tcp_packet: builds an IPv4/TCP packet with
correct checksums. split: what a TSO super-packet becomes, segment by segment, following the
kernel's tcp_gso_segment (IP ID + k, seq + k * mss, FIN/PSH on the last, CWR on the first).
"""

from __future__ import annotations

import struct


def checksum(data: bytes) -> int:
    """Folded ones' complement sum (not inverted)."""
    if len(data) % 2:
        data += b"\x00"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ip_header(src: bytes, dst: bytes, total: int, ident: int, ttl: int = 64, tos: int = 0, df: bool = True,
              proto: int = 6) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, tos, total, ident, 0x4000 if df else 0, ttl, proto, 0, src, dst)
    csum = ~checksum(hdr) & 0xFFFF
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:]


def tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(segment))
    return ~checksum(pseudo + segment) & 0xFFFF


def tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes,
               options: bytes = b"", ident: int = 1, window: int = 502) -> bytes:
    doff = (20 + len(options)) // 4
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack, doff << 4, flags, window, 0, 0) + options
    csum = tcp_checksum(src, dst, tcp + payload)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    return ip_header(src, dst, 20 + len(tcp) + len(payload), ident) + tcp + payload


def parse(packet: bytes) -> dict:
    ihl = (packet[0] & 0x0F) * 4
    thl = (packet[ihl + 12] >> 4) * 4
    return {
        "src": packet[12:16], "dst": packet[16:20], "id": struct.unpack("!H", packet[4:6])[0],
        "sport": struct.unpack("!H", packet[ihl:ihl + 2])[0], "dport": struct.unpack("!H", packet[ihl + 2:ihl + 4])[0],
        "seq": struct.unpack("!I", packet[ihl + 4:ihl + 8])[0], "flags": packet[ihl + 13],
        "options": packet[ihl + 20:ihl + thl], "payload": packet[ihl + thl:], "ihl": ihl, "thl": thl,
    }


def valid(packet: bytes) -> bool:
    p = parse(packet)
    if checksum(packet[:p["ihl"]]) != 0xFFFF:
        return False
    seg = packet[p["ihl"]:]
    pseudo = p["src"] + p["dst"] + struct.pack("!BBH", 0, 6, len(seg))
    return checksum(pseudo + seg) == 0xFFFF


def split(packet: bytes, mss: int) -> list[bytes]:
    p = parse(packet)
    payload = p["payload"]
    chunks = [payload[i:i + mss] for i in range(0, len(payload), mss)] or [b""]
    ack = struct.unpack("!I", packet[p["ihl"] + 8:p["ihl"] + 12])[0]
    window = struct.unpack("!H", packet[p["ihl"] + 14:p["ihl"] + 16])[0]
    out = []
    for k, chunk in enumerate(chunks):
        flags = p["flags"]
        if k != len(chunks) - 1:
            flags &= ~(0x01 | 0x08)
        if k:
            flags &= ~0x80
        out.append(tcp_packet(p["src"], p["dst"], p["sport"], p["dport"], p["seq"] + k * mss, ack, flags, chunk,
                              p["options"], ident=(p["id"] + k) & 0xFFFF, window=window))
    return out


def finish_partial(packet: bytes, csum_start: int, csum_offset: int) -> bytes:
    """What the kernel does with a CHECKSUM_PARTIAL packet: sum from csum_start, invert, store."""
    at = csum_start + csum_offset
    # the field holds the pseudo-header sum; the sum over the rest includes it
    csum = ~checksum(packet[csum_start:]) & 0xFFFF
    return packet[:at] + struct.pack("!H", csum) + packet[at + 2:]


def udp_packet(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int = 1,
               no_checksum: bool = False) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    if not no_checksum:
        pseudo = src + dst + struct.pack("!BBH", 0, 17, len(udp) + len(payload))
        csum = ~checksum(pseudo + udp + payload) & 0xFFFF or 0xFFFF
        udp = udp[:6] + struct.pack("!H", csum)
    return ip_header(src, dst, 20 + 8 + len(payload), ident, proto=17) + udp + payload


def udp_valid(packet: bytes) -> bool:
    if checksum(packet[:20]) != 0xFFFF or struct.unpack("!H", packet[24:26])[0] != len(packet) - 20:
        return False
    if packet[26:28] == b"\x00\x00":
        return True
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(packet) - 20)
    return checksum(pseudo + packet[20:]) == 0xFFFF


def udp_split(packet: bytes, size: int) -> list[bytes]:
    """kernel __udp_gso_segment: IP ID + k, each datagram with its own length and checksum."""
    src, dst = packet[12:16], packet[16:20]
    sport, dport = struct.unpack("!HH", packet[20:24])
    ident = struct.unpack("!H", packet[4:6])[0]
    payload = packet[28:]
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)] or [b""]
    return [udp_packet(src, dst, sport, dport, c, ident=(ident + k) & 0xFFFF) for k, c in enumerate(chunks)]
