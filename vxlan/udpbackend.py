"""flannel's ``udp`` backend, for configs without ``Backend`` (flanneld's code then picks it).

The wire format is flannel's ``pkg/backend/udp/proxy_amd64.c``: the UDP
payload is the bare inner IPv4 packet, sent to the peer's PublicIP on ``Backend.Port`` (8285).
Both sender and receiver decrement the TTL with the RFC 1624 checksum fix and drop at zero; a
destination in no peer's subnet gets an ICMP net-unreachable written back into the TUN; the
receiver does not check who sent a datagram (flannel does not). Lease: ``{"PublicIP": ...}``
only, no BackendType, and every lease is a peer (``udp_network_amd64.go`` does not filter).

Sans-IO like ``vxlan.wire.Codec`` and driven by the same pure-Python ``DataPlane`` (with
``headroom = 0``): this backend exists for compatibility, at flanneld-udp speed, not for speed.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from vxlan.wire import DropCounters, DropReason, fold16, internet_checksum

DEFAULT_UDP_PORT = 8285  # udp_amd64.go defaultPort
UDP_ENCAP_OVERHEAD = 28  # udp_network_amd64.go encapOverhead: IPv4 + UDP headers
ICMP_NET_UNREACHABLE_TTL = 8  # proxy_amd64.c send_net_unreachable


def decrement_ttl(buf: Any) -> bool:
    """TTL - 1 in place with RFC 1624's incremental checksum update; False if it reached 0."""
    ttl = buf[8] - 1
    if ttl <= 0:
        return False
    buf[8] = ttl
    # HC' = ~(~HC + ~m + m'): the 16-bit word holding TTL drops by 0x0100
    old = (buf[10] << 8) | buf[11]
    new = ~fold16((~old & 0xFFFF) + (~((ttl + 1) << 8 | buf[9]) & 0xFFFF) + ((ttl << 8) | buf[9])) & 0xFFFF
    buf[10], buf[11] = new >> 8, new & 0xFF
    return True


def net_unreachable(offender: bytes, source: bytes) -> bytes | None:
    """ICMP type 3 code 0 for ``offender`` from ``source``, as flannel's proxy builds it; None
    where RFC 792 says not to answer (ICMP, non-first fragments) or the header is broken."""
    if len(offender) < 20:
        return None
    ihl = (offender[0] & 0x0F) * 4
    if ihl < 20 or len(offender) < ihl or offender[9] == 1:
        return None
    if struct.unpack_from("!H", offender, 6)[0] & 0x1FFF:
        return None
    quoted = offender[: ihl + 8]
    icmp = bytearray(struct.pack("!BBHI", 3, 0, 0, 0) + quoted)
    icmp[2:4] = struct.pack("!H", internet_checksum(bytes(icmp)))
    total = 20 + len(icmp)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ICMP_NET_UNREACHABLE_TTL, 1, 0, source,
                               offender[12:16]))
    ip[10:12] = struct.pack("!H", internet_checksum(bytes(ip)))
    return bytes(ip + icmp)


class UdpCodec(DropCounters):
    """Peers (subnet -> PublicIP, port) and the per-packet rules of flannel's udp proxy."""

    headroom = 0  # nothing in front of the inner packet

    def __init__(self, tun_address: ipaddress.IPv4Address, subnet_len: int, port: int,
                 strict_source: bool = False) -> None:
        self.source = tun_address.packed
        self.strict_source = strict_source
        self.mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.port = port
        self._peers: dict[int, tuple[str, int]] = {}
        super().__init__()
        self.pending_tun: list[bytes] = []  # ICMP replies for the TUN, written after a batch

    def set_peer(self, subnet: int, _vtep_mac: bytes | None, public_ip: str) -> None:
        self._peers[subnet & self.mask] = (public_ip, self.port)

    def remove_peer(self, subnet: int) -> None:
        self._peers.pop(subnet & self.mask, None)

    def peer_count(self) -> int:
        return len(self._peers)

    def _source_owner(self, packet: Any) -> str | None:
        """--strict-source: the PublicIP of the peer whose subnet holds the packet's source."""
        peer = self._peers.get(int.from_bytes(packet[12:16], "big") & self.mask)
        return None if peer is None else peer[0]

    def _verdict(self, verdicts: list[int], i: int, verdict: int) -> bool:
        """Record packet ``i``'s verdict; True if it goes on."""
        verdicts[i] = verdict
        if verdict:
            self._drops[verdict] += 1
        return not verdict

    def encap_batch(self, bufs: list, lengths: list[int], n: int, verdicts: list[int], aux: list) -> int:
        """TUN packets -> (verdict, destination); the datagram is the packet itself. The number
        forwarded (vxlan.codec.BatchCodec)."""
        ok = 0
        for i in range(n):
            buf, length = bufs[i], lengths[i]
            verdict = DropReason.OK
            if length < 20 or buf[0] >> 4 != 4:
                verdict = DropReason.NOT_IP
            else:
                dst = int.from_bytes(buf[16:20], "big")
                peer = self._peers.get(dst & self.mask)
                if peer is None:
                    verdict = DropReason.NO_ROUTE
                    reply = net_unreachable(bytes(buf[:length]), self.source)
                    if reply is not None:
                        self.pending_tun.append(reply)
                elif not decrement_ttl(buf):
                    verdict = DropReason.TTL_EXPIRED
                else:
                    aux[i] = peer
            ok += self._verdict(verdicts, i, verdict)
        return ok

    def decap_batch(self, bufs: list, lengths: list[int], senders: list, n: int, verdicts: list[int],
                    inner: list[int], tos: list[int] | None = None) -> int:
        """Datagrams -> (verdict, packet length); the packet starts at offset 0. The number
        forwarded. ``tos`` is not looked at: flannel's udp proxy carries no ECN across either
        (the packet is read from its TUN and written as a UDP payload)."""
        ok = 0
        for i in range(n):
            buf, length = bufs[i], lengths[i]
            verdict = DropReason.OK
            if length < 20 or buf[0] >> 4 != 4:
                verdict = DropReason.BAD_INNER_IP
            elif self.strict_source and self._source_owner(buf) != senders[i]:
                verdict = DropReason.SPOOFED_SOURCE
            elif not decrement_ttl(buf):
                verdict = DropReason.TTL_EXPIRED
            else:
                inner[i] = min(length, (buf[2] << 8) | buf[3]) or length
            ok += self._verdict(verdicts, i, verdict)
        return ok
