"""VXLAN wire format: the readable reference encap/decap and the drop reasons.

This module is the specification of the data plane. ``fastpath._fastpath`` is its compiled
twin and must give byte-identical results for every input (tests/unit/test_fastpath_equiv.py
holds the two side by side). Nothing here does I/O.

On the wire (RFC 7348 §5, and what a Linux ``flannel.<VNI>`` device emits: pkg/backend/vxlan/device.go)
the UDP payload is::

    VXLAN header (8)   flags 0x08 (I bit), 3 reserved, 24-bit VNI, 1 reserved
    Ethernet II (14)   dst = receiver's VtepMAC, src = sender's VtepMAC, type 0x0800/0x86DD
    inner IP packet    unchanged

Packets live in caller-owned buffers with ``HEADROOM`` free bytes in front of the inner IP
packet, so encapsulation writes the 22 header bytes in place and never copies the payload
(wireguard-go's ``Read(bufs, sizes, offset)`` pattern). Every call is batch-shaped: lists of
buffers and lengths in, per-packet verdicts out, so the later C loop is a drop-in.
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Sequence
from typing import Any

VXLAN_HEADER_LEN = 8
ETHERNET_HEADER_LEN = 14
HEADROOM = VXLAN_HEADER_LEN + ETHERNET_HEADER_LEN  # 22 bytes written in front of a packet
# Outer IPv4 (20) + UDP (8) + HEADROOM: what the tunnel costs per packet. flannel calls the
# same number encapOverhead = 50 (pkg/backend/vxlan/vxlan_network.go) and sets MTU = ext - 50.
ENCAP_OVERHEAD = 20 + 8 + HEADROOM

VXLAN_FLAG_I = 0x08  # RFC 7348 §5: "I flag MUST be set to 1 for a valid VXLAN Network ID"
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806

DEFAULT_PORT = 8472  # Linux's vxlan default; flannel's Port 0 leaves it to the kernel
IANA_PORT = 4789
MAX_VNI = (1 << 24) - 1


class DropReason(enum.IntEnum):
    """Why a packet was not forwarded. ``OK`` (0) is the verdict of a forwarded packet.

    The metric label is the member name in snake case (``vxland_drops_total{reason=...}``).
    """

    OK = 0
    # wire -> TUN (decapsulation)
    TOO_SHORT = 1  # shorter than the VXLAN header plus the inner Ethernet header
    NO_I_FLAG = 2  # RFC 7348 §5: the I flag must be set
    WRONG_VNI = 3  # not our VNI
    UNKNOWN_SENDER = 4  # outer source address is no known peer's PublicIP
    DST_MAC_MISMATCH = 5  # unicast frame for another VTEP (kernel: PACKET_OTHERHOST)
    DST_MAC_BROADCAST = 6  # broadcast or multicast frame; flannel >= 0.9 never sends one
    ARP = 7  # ARP frame; flannel >= 0.9 programs static neighbours, no ARP crosses the wire
    BAD_ETHERTYPE = 8  # neither IPv4, IPv6 nor ARP
    BAD_INNER_IP = 9  # inner IP header malformed (version, header length, total length)
    TOO_BIG = 10  # inner packet larger than the TUN MTU
    # TUN -> wire (encapsulation)
    NO_ROUTE = 11  # destination in no peer's subnet
    NOT_IP = 12  # TUN handed us something that is no IPv4/IPv6 packet
    # I/O, counted by the data plane rather than the codec
    SEND_FAILED = 13  # sendto() on the UDP socket failed
    TUN_WRITE_FAILED = 14  # write() to the TUN failed
    BAD_OFFLOAD = 15  # a TUN super-packet that cannot be split, or a bad checksum offset in its header
    TTL_EXPIRED = 16  # udp backend: TTL reached 0 (flannel's proxy decrements it on both sides)
    # --strict-source only: the inner source lies in no subnet whose lease names the sender as
    # its VTEP (another node's subnet, outside the Network, or an IPv6 packet on an IPv4 VTEP)
    SPOOFED_SOURCE = 17
    # packet-socket receive only (the kernel's IP and UDP layers check these for a UDP socket):
    # outer IPv4/UDP header malformed or its checksum wrong, an outer fragment, or a super-packet
    # the TUN cannot take whole
    BAD_OUTER = 18
    # RFC 6040 section 4.2: the outer header says CE (congestion on the underlay) but the inner
    # packet's sender did not ask for ECN; the kernel's vxlan device drops it too (vxlan_rcv)
    CE_NOT_ECT = 19

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def side(self) -> str:
        """Where the dropped packet was received: "tun" (on its way into the tunnel) or
        "underlay" (a datagram); vxland_received_total{side} = forwarded + these drops.
        TTL_EXPIRED (the udp backend) happens on both: "both"."""
        if self is DropReason.TTL_EXPIRED:
            return "both"
        return "tun" if self in _TUN_SIDE else "underlay"


_TUN_SIDE = {DropReason.NO_ROUTE, DropReason.NOT_IP, DropReason.SEND_FAILED, DropReason.BAD_OFFLOAD}


N_REASONS = len(DropReason)


_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def mac_to_bytes(mac: str) -> bytes:
    """``"aa:bb:cc:dd:ee:ff"`` -> 6 bytes; ValueError with the offending text otherwise."""
    if not isinstance(mac, str) or _MAC_RE.fullmatch(mac) is None:
        raise ValueError(f"{mac!r} is not a MAC address (want six hex pairs like 0a:1b:2c:3d:4e:5f)")
    return bytes.fromhex(mac.replace(":", ""))


def random_vtep_mac() -> bytes:
    """A random locally administered unicast MAC, as flannel's pkg/mac/mac.go:NewHardwareAddr."""
    mac = bytearray(os.urandom(6))
    mac[0] = (mac[0] & 0xFE) | 0x02
    return bytes(mac)


def mac_to_str(mac: bytes) -> str:
    """6 bytes -> lower-case colon form, as Go's net.HardwareAddr.String() writes it."""
    return ":".join(f"{b:02x}" for b in mac)


def vxlan_header(vni: int) -> bytes:
    """The 8-byte VXLAN header: I flag, reserved bytes zero (RFC 7348 §5)."""
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"VNI {vni} is out of range 0..{MAX_VNI}")
    return bytes((VXLAN_FLAG_I, 0, 0, 0)) + vni.to_bytes(3, "big") + b"\x00"


def encap_template(vni: int, dst_mac: bytes, src_mac: bytes, ethertype: int = ETH_P_IP) -> bytes:
    """The 22 bytes written in front of an inner packet for one peer: IPv4 between the
    flannel.<VNI> VtepMACs, or (``ETH_P_IPV6``) IPv6 between the flannel-v6.<VNI> ones."""
    if len(dst_mac) != 6 or len(src_mac) != 6:
        raise ValueError("MAC addresses are 6 bytes")
    return vxlan_header(vni) + dst_mac + src_mac + ethertype.to_bytes(2, "big")


def check_vtep_address(ip: str) -> None:
    """A peer's PublicIP must be a unicast IPv4 address (0.0.0.0 is flannel's "unset")."""
    n = ipv4_to_int(ip)  # raises ValueError
    if n == 0 or n >> 28 == 0xE or n == 0xFFFFFFFF:  # unspecified, multicast (224/4), broadcast
        raise ValueError(f"{ip} is not a VTEP address")


def check_vtep_address6(ip: str) -> str:
    """A peer's PublicIPv6 must be a unicast IPv6 address; returns its canonical text (RFC
    5952, as Go and ipaddress write it), the form senders are compared in."""
    try:
        address = ipaddress.IPv6Address(ip)
    except ValueError:
        raise ValueError(f"{ip!r} is not an IPv6 address") from None
    if address.is_unspecified or address.is_multicast or address.ipv4_mapped is not None:
        raise ValueError(f"{ip} is not a VTEP address")
    return str(address)


def fold16(total: int) -> int:
    """A one's-complement sum folded to 16 bits (RFC 1071 §4.1: add the carries back in)."""
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes) -> int:
    """The Internet checksum of ``data`` (RFC 1071), as it goes into a header: the complement of
    the folded sum of its 16-bit big-endian words (an odd last byte padded with a zero)."""
    if len(data) % 2:
        data += b"\0"
    return ~fold16(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


def ipv4_to_int(ip: str) -> int:
    """Dotted-quad IPv4 text -> int; ValueError otherwise. inet_pton accepts exactly what
    ipaddress.IPv4Address does (four decimal octets, no leading zeros), 10x faster: a /8 of
    leases parses 65,536 addresses at start."""
    try:
        return int.from_bytes(socket.inet_pton(socket.AF_INET, ip), "big")
    except (OSError, TypeError, ValueError):
        raise ValueError(f"{ip!r} is not an IPv4 address") from None


class PeerMap:
    """What the hot path reads about peers, kept by the control plane; both codecs share it.

    ``entries`` maps a subnet's network address (int) to its 22-byte header template and the
    ``(public_ip, port)`` to send to; ``senders`` counts the subnets each PublicIP serves (the
    known VTEPs a datagram may come from). Both dicts are changed in place, between batches.

    A dual-stack node (``vtep_mac6``, ``subnet_len6``) has a second VTEP, flannel-v6.<VNI>'s:
    ``entries6`` maps an IPv6 subnet's network address (int) to the template between the two
    IPv6 VtepMACs and ``(public_ipv6, port)``; its senders are counted in ``senders`` too.
    """

    def __init__(self, vni: int, vtep_mac: bytes, subnet_len: int, port: int,
                 vtep_mac6: bytes | None = None, subnet_len6: int = 0) -> None:
        if not 0 < subnet_len <= 32:
            raise ValueError(f"subnet_len {subnet_len} is out of range 1..32")
        if len(vtep_mac) != 6 or (vtep_mac6 is not None and len(vtep_mac6) != 6):
            raise ValueError("vtep_mac is 6 bytes")
        if vtep_mac6 is not None and not 0 < subnet_len6 <= 128:
            raise ValueError(f"subnet_len6 {subnet_len6} is out of range 1..128")
        self.vni = vni
        self.vtep_mac = bytes(vtep_mac)
        self.mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
        self.port = port
        self.entries: dict[int, tuple[bytes, tuple[str, int]]] = {}
        self.senders: dict[str, int] = {}
        self.vtep_mac6 = bytes(vtep_mac6) if vtep_mac6 is not None else None
        self.mask6 = ((1 << 128) - 1) ^ ((1 << (128 - subnet_len6)) - 1) if vtep_mac6 is not None else 0
        self.entries6: dict[int, tuple[bytes, tuple[str, int]]] = {}

    def set6(self, subnet6: int, vtep_mac: bytes, public_ipv6: str) -> None:
        """Add or replace the peer for the IPv6 subnet ``subnet6`` (network address as an int)."""
        if self.vtep_mac6 is None:
            raise ValueError("this node has no IPv6 VTEP (vtep_mac6)")
        if subnet6 & ~self.mask6:
            raise ValueError(f"{ipaddress.IPv6Address(subnet6)} is not a subnet address for this IPv6SubnetLen")
        public_ipv6 = check_vtep_address6(public_ipv6)
        self._store(self.entries6, subnet6, encap_template(self.vni, bytes(vtep_mac), self.vtep_mac6, ETH_P_IPV6),
                    public_ipv6)

    def remove6(self, subnet6: int) -> None:
        self._drop(self.entries6, subnet6)

    def set(self, subnet: int, vtep_mac: bytes, public_ip: str) -> None:
        """Add or replace the peer for ``subnet`` (network address as an int)."""
        if subnet & ~self.mask & 0xFFFFFFFF:
            raise ValueError(f"{ipaddress.IPv4Address(subnet)} is not a subnet address for this SubnetLen")
        check_vtep_address(public_ip)
        self._store(self.entries, subnet, encap_template(self.vni, bytes(vtep_mac), self.vtep_mac), public_ip)

    def remove(self, subnet: int) -> None:
        self._drop(self.entries, subnet)

    def _store(self, entries: dict, key: int, template: bytes, address: str) -> None:
        """A peer into ``entries`` (IPv4 or IPv6 subnets) under ``key``, replacing one there."""
        self._drop(entries, key)
        entries[key] = (template, (address, self.port))
        self.senders[address] = self.senders.get(address, 0) + 1

    def _drop(self, entries: dict, key: int) -> None:
        old = entries.pop(key, None)
        if old is not None:
            self._forget_sender(old[1][0])

    def _forget_sender(self, ip: str) -> None:
        left = self.senders[ip] - 1
        if left:
            self.senders[ip] = left
        else:
            del self.senders[ip]


class DropCounters:
    """Drops by ``DropReason`` value, kept by a codec and read by ``/metrics``."""

    def __init__(self) -> None:
        self._drops = [0] * N_REASONS

    def drop_counts(self) -> list[int]:
        """Drops by ``DropReason`` value (index 0, OK, stays 0)."""
        return list(self._drops)

    def count_drop(self, reason: int, n: int = 1) -> None:
        """Count drops decided outside the codec (I/O errors)."""
        self._drops[reason] += n


class Codec(DropCounters):
    """Encapsulates TUN packets for their peer and checks and strips received datagrams
    (the interface: vxlan.codec.BatchCodec).

    Reads the peer table (``PeerMap``) and keeps the drop counters by reason.
    ``set_peer``/``remove_peer`` are the narrow, idempotent interface the control plane
    drives; everything else is per batch.
    """

    headroom = HEADROOM  # VXLAN + inner Ethernet in front of each inner packet

    def __init__(self, vni: int, vtep_mac: bytes, subnet_len: int, tun_mtu: int, port: int,
                 strict_source: bool = False, vtep_mac6: bytes | None = None, subnet_len6: int = 0) -> None:
        self.pending_tun: list[bytes] = []  # nothing goes back into the TUN (vxlan.codec.BatchCodec)
        self._map = PeerMap(vni, vtep_mac, subnet_len, port, vtep_mac6, subnet_len6)
        self._strict_source = strict_source
        self._vni_bytes = vxlan_header(vni)[4:7]
        self._vtep_mac = self._map.vtep_mac
        self._vtep_mac6 = self._map.vtep_mac6
        self._mask = self._map.mask
        self._mask6 = self._map.mask6
        self._tun_mtu = tun_mtu
        self._peers = self._map.entries
        self._peers6 = self._map.entries6
        self._senders = self._map.senders
        super().__init__()

    # -- control plane ------------------------------------------------------------------
    def set_peer(self, subnet: int, vtep_mac: bytes, public_ip: str) -> None:
        """Add or replace the peer for ``subnet`` (network address as an int)."""
        self._map.set(subnet, vtep_mac, public_ip)

    def remove_peer(self, subnet: int) -> None:
        self._map.remove(subnet)

    def set_peer6(self, subnet6: int, vtep_mac: bytes, public_ipv6: str) -> None:
        """Add or replace the peer for an IPv6 subnet (network address as an int): a
        dual-stack lease's BackendV6Data VtepMAC and PublicIPv6."""
        self._map.set6(subnet6, vtep_mac, public_ipv6)

    def remove_peer6(self, subnet6: int) -> None:
        self._map.remove6(subnet6)

    def peer_count(self) -> int:
        return len(self._peers)

    # -- data plane ---------------------------------------------------------------------
    def encap_batch(
        self,
        bufs: Sequence[Any],
        lengths: Sequence[int],
        count: int,
        verdicts: list[int],
        dests: list[Any],
    ) -> int:
        """Write the headers in front of ``count`` packets read from the TUN.

        Packet ``i`` is ``bufs[i][HEADROOM:HEADROOM + lengths[i]]``. On return
        ``verdicts[i]`` is ``DropReason.OK`` (the datagram is ``bufs[i][:HEADROOM +
        lengths[i]]``, to be sent to ``dests[i]``) or the reason it was dropped. Returns the
        number of packets to send.
        """
        ok = 0
        drops = self._drops
        for i in range(count):
            buf = bufs[i]
            n = lengths[i]
            if n < 0 or HEADROOM + n > len(buf):
                raise ValueError(f"length {n} of packet {i} does not fit its buffer")
            verdict, peer = self._route(buf, n)
            verdicts[i] = verdict
            if verdict:
                drops[verdict] += 1
            else:
                buf[0:HEADROOM] = peer[0]
                dests[i] = peer[1]
                ok += 1
        return ok

    def _route(self, buf: Any, n: int) -> tuple[int, Any]:
        """A TUN packet's verdict and, when OK, its peer: (the 22 header bytes, (ip, port))."""
        if n < 1:
            return DropReason.NOT_IP, None
        version = buf[HEADROOM] >> 4
        if version == 6:
            if n < 40:
                return DropReason.NOT_IP, None
            # to the peer of the IPv6 subnet: its flannel-v6 VtepMAC, over the IPv6 underlay
            peer = self._peers6.get(int.from_bytes(buf[HEADROOM + 24 : HEADROOM + 40], "big") & self._mask6)
            return (DropReason.NO_ROUTE, None) if peer is None else (DropReason.OK, peer)
        if version != 4 or n < 20:
            return DropReason.NOT_IP, None
        peer = self._peers.get(int.from_bytes(buf[HEADROOM + 16 : HEADROOM + 20], "big") & self._mask)
        return (DropReason.NO_ROUTE, None) if peer is None else (DropReason.OK, peer)

    def decap_batch(
        self,
        bufs: Sequence[Any],
        lengths: Sequence[int],
        senders: Sequence[str],
        count: int,
        verdicts: list[int],
        inner_lengths: list[int],
        tos: Sequence[int] | None = None,
    ) -> int:
        """Check ``count`` received datagrams (``bufs[i][:lengths[i]]`` from ``senders[i]``).

        On return ``verdicts[i]`` is ``OK`` and the inner packet is
        ``bufs[i][HEADROOM:HEADROOM + inner_lengths[i]]`` (Ethernet padding after the IP
        total length is cut off), or the reason the datagram was dropped. Returns the number
        of inner packets to write to the TUN. ``tos[i]``, where given, is the TOS byte of the
        datagram's outer IPv4 header: its ECN field is carried inward (``ecn_decapsulate``).
        """
        ok = 0
        drops = self._drops
        for i in range(count):
            n = lengths[i]
            if n < 0 or n > len(bufs[i]):
                raise ValueError(f"length {n} of datagram {i} does not fit its buffer")
            verdict, inner = self._check(bufs[i], n, senders[i])
            if not verdict and tos is not None:
                verdict = ecn_decapsulate(bufs[i], HEADROOM, inner, tos[i])
            verdicts[i] = verdict
            inner_lengths[i] = inner
            if verdict:
                drops[verdict] += 1
            else:
                ok += 1
        return ok

    def _check(self, buf: Any, n: int, sender: str) -> tuple[int, int]:
        if n < HEADROOM:
            return DropReason.TOO_SHORT, 0
        if not buf[0] & VXLAN_FLAG_I:
            return DropReason.NO_I_FLAG, 0
        # Reserved bits (flags other than I, bytes 1-3 and 7) are ignored on receipt (RFC 7348 §5).
        if bytes(buf[4:7]) != self._vni_bytes:
            return DropReason.WRONG_VNI, 0
        if sender not in self._senders:
            return DropReason.UNKNOWN_SENDER, 0
        # the VTEP the datagram was sent to: flannel-v6.<VNI>'s over the IPv6 underlay
        if bytes(buf[8:14]) != (self._vtep_mac6 if ":" in sender else self._vtep_mac):
            if buf[8] & 1:  # group bit: broadcast and multicast
                return DropReason.DST_MAC_BROADCAST, 0
            return DropReason.DST_MAC_MISMATCH, 0
        ethertype = (buf[20] << 8) | buf[21]
        verdict, total = self._inner(buf, n, ethertype)
        if verdict:
            return verdict, 0
        if self._strict_source and not self._source_is_senders(buf, ethertype, sender):
            return DropReason.SPOOFED_SOURCE, 0
        if total > self._tun_mtu:
            return DropReason.TOO_BIG, 0
        return DropReason.OK, total

    @staticmethod
    def _inner(buf: Any, n: int, ethertype: int) -> tuple[int, int]:
        """The inner packet's verdict and its length by its own header (Ethernet padding cut)."""
        avail = n - HEADROOM
        if ethertype == ETH_P_IP:
            if avail < 20 or buf[HEADROOM] >> 4 != 4:
                return DropReason.BAD_INNER_IP, 0
            header_len = (buf[HEADROOM] & 0x0F) * 4
            total = (buf[HEADROOM + 2] << 8) | buf[HEADROOM + 3]
            if header_len < 20 or total < header_len or total > avail:
                return DropReason.BAD_INNER_IP, 0
            return DropReason.OK, total
        if ethertype == ETH_P_IPV6:
            if avail < 40 or buf[HEADROOM] >> 4 != 6:
                return DropReason.BAD_INNER_IP, 0
            total = 40 + ((buf[HEADROOM + 4] << 8) | buf[HEADROOM + 5])
            return (DropReason.BAD_INNER_IP, 0) if total > avail else (DropReason.OK, total)
        if ethertype == ETH_P_ARP:
            return DropReason.ARP, 0
        return DropReason.BAD_ETHERTYPE, 0

    def _source_is_senders(self, buf: Any, ethertype: int, sender: str) -> bool:
        """--strict-source: flannel (and the kernel's vxlan) deliver whatever a known VTEP sends;
        this asks that the inner source lie in a subnet whose lease names that VTEP."""
        if ethertype == ETH_P_IPV6:
            source = int.from_bytes(buf[HEADROOM + 8 : HEADROOM + 24], "big")
            owner = self._peers6.get(source & self._mask6) if self._mask6 else None
            return owner is not None and owner[1][0] == sender
        if ethertype != ETH_P_IP:
            return False
        owner = self._peers.get(int.from_bytes(buf[HEADROOM + 12 : HEADROOM + 16], "big") & self._mask)
        return owner is not None and owner[1][0] == sender


# -- one packet at a time, for tests and tools (allocates; never on the hot path) -------------
def encap_one(codec: Any, packet: bytes) -> tuple[bytes, tuple[str, int]] | DropReason:
    """Encapsulate one packet with either codec: (datagram, destination) or the drop reason."""
    buf = bytearray(HEADROOM) + packet
    verdicts, dests = [0], [None]
    codec.encap_batch([buf], [len(packet)], 1, verdicts, dests)
    if verdicts[0]:
        return DropReason(verdicts[0])
    return bytes(buf), dests[0]  # type: ignore[return-value]


def ecn_outer(packet: Any) -> int:
    """The outer ECN field for an inner packet (RFC 6040 section 4.1, the kernel's
    INET_ECN_encapsulate): the inner one, CE sent as ECT(0)."""
    ecn = (packet[1] >> 4) & 3 if packet[0] >> 4 == 6 else packet[1] & 3
    return 2 if ecn == 3 else ecn


def ecn_decapsulate(buf: Any, off: int, n: int, outer_tos: int) -> DropReason:
    """RFC 6040 section 4.2 (the kernel's INET_ECN_decapsulate) for the inner packet at
    ``buf[off:off + n]``: with CE on the outer header, an ECN-capable inner packet is marked CE
    in place (its IPv4 header checksum updated as RFC 1624 says) and a Not-ECT one is
    dropped (CE_NOT_ECT). Any other outer field leaves the inner one as it is."""
    if outer_tos & 3 != 3 or n < 1:
        return DropReason.OK
    if buf[off] >> 4 == 6:
        if n < 40:
            return DropReason.OK
        if not (buf[off + 1] >> 4) & 3:
            return DropReason.CE_NOT_ECT
        buf[off + 1] |= 0x30
        return DropReason.OK
    if n < 20:
        return DropReason.OK
    if not buf[off + 1] & 3:
        return DropReason.CE_NOT_ECT
    if buf[off + 1] & 3 != 3:
        before = buf[off] << 8 | buf[off + 1]
        buf[off + 1] |= 3
        after = buf[off] << 8 | buf[off + 1]
        check = (buf[off + 10] << 8 | buf[off + 11]) ^ 0xFFFF
        check = fold16(check + (before ^ 0xFFFF) + after) ^ 0xFFFF
        buf[off + 10 : off + 12] = check.to_bytes(2, "big")
    return DropReason.OK


def decap_one(codec: Any, datagram: bytes, sender: str) -> bytes | DropReason:
    """Check and strip one datagram with either codec: the inner packet or the drop reason."""
    verdicts, inner = [0], [0]
    codec.decap_batch([bytearray(datagram)], [len(datagram)], [sender], 1, verdicts, inner)
    if verdicts[0]:
        return DropReason(verdicts[0])
    return bytes(datagram[HEADROOM : HEADROOM + inner[0]])
