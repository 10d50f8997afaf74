"""Every codec keeps the declared batch interface (vxlan.codec.BatchCodec), return values
included: the compiled Codec and Engine, the pure-Python reference and the udp backend's.

Issue #13: the udp codec returned a bool where the others returned a count."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tests.conftest import compiled_codec
from vxlan import wire
from vxlan.codec import BatchCodec
from vxlan.dataplane import BUF_SIZE
from vxlan.udpbackend import UdpCodec
from vxlan.wire import DropReason

MAC_A, MAC_B = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_A, IP_B = "198.18.0.1", "198.18.0.2"
SUBNET_A, SUBNET_B = wire.ipv4_to_int("10.5.1.0"), wire.ipv4_to_int("10.5.2.0")


def packet(dst: str, src: str = "10.5.1.2") -> bytes:
    payload = b"contract"
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + payload


def vxlan_pair(cls):
    """Node A (10.5.1.0/24 at IP_A) and node B (10.5.2.0/24 at IP_B), each knowing the other."""
    a, b = cls(1, MAC_A, 24, 1450, 8472), cls(1, MAC_B, 24, 1450, 8472)
    a.set_peer(SUBNET_B, MAC_B, IP_B)
    b.set_peer(SUBNET_A, MAC_A, IP_A)
    return a, b


def udp_pair(_cls=None):
    a = UdpCodec(ipaddress.IPv4Address("10.5.1.0"), 24, 8285)
    b = UdpCodec(ipaddress.IPv4Address("10.5.2.0"), 24, 8285)
    a.set_peer(SUBNET_B, None, IP_B)
    b.set_peer(SUBNET_A, None, IP_A)
    return a, b


def compiled_engine():
    from fastpath import _fastpath

    return _fastpath.Engine


PAIRS = {
    "reference": lambda: vxlan_pair(wire.Codec),
    "compiled": lambda: vxlan_pair(compiled_codec()),
    "engine": lambda: vxlan_pair(compiled_engine()),
    "udp": udp_pair,
}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_codec_keeps_the_batch_contract(name):
    a, b = PAIRS[name]()
    assert isinstance(a, BatchCodec) and a.pending_tun == []
    hr = a.headroom
    batch = [packet("10.5.2.9"), packet("10.9.9.9"), b"\x00" * 8]  # to B, to nobody, not IP
    bufs = [bytearray(BUF_SIZE) for _ in batch]
    for buf, pkt in zip(bufs, batch, strict=True):
        buf[hr : hr + len(pkt)] = pkt
    lengths = [len(p) for p in batch]
    verdicts, dests = [0] * 3, [None] * 3
    sent = a.encap_batch(bufs, lengths, 3, verdicts, dests)
    assert type(sent) is int and sent == 1  # a count, not a bool
    assert verdicts[0] == DropReason.OK and dests[0][0] == IP_B
    assert verdicts[1] == DropReason.NO_ROUTE and verdicts[2] != DropReason.OK
    assert a.drop_counts()[DropReason.NO_ROUTE] == 1
    a.pending_tun.clear()  # the udp codec answers "net unreachable" into the TUN

    datagram = bytes(bufs[0][: hr + lengths[0]])
    rx = [bytearray(BUF_SIZE) for _ in range(2)]
    rx[0][: len(datagram)] = datagram
    rx[1][:4] = b"junk"
    verdicts, inner = [0, 0], [0, 0]
    got = b.decap_batch(rx, [len(datagram), 4], [IP_A, IP_A], 2, verdicts, inner)
    assert type(got) is int and got == 1
    assert verdicts[1] != DropReason.OK and b.drop_counts()[verdicts[1]] == 1
    delivered = bytes(rx[0][hr : hr + inner[0]])
    assert len(delivered) == len(batch[0]) and delivered[12:] == batch[0][12:]  # addresses, payload

    b.count_drop(DropReason.SEND_FAILED, 2)
    assert b.drop_counts()[DropReason.SEND_FAILED] == 2
    b.remove_peer(SUBNET_A)
    assert b.peer_count() == 0
