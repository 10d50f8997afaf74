"""The one interface of the per-packet codecs, declared.

Four classes keep it: ``vxlan.wire.Codec`` (the pure-Python VXLAN reference), the compiled
``fastpath._fastpath.Codec`` and its ``Engine`` (same bytes, C), and ``vxlan.udpbackend.UdpCodec``
(flannel's udp proxy format). ``vxlan.dataplane.DataPlane`` drives any of them and
``tests/unit/test_codec_contract.py`` checks each against this ``Protocol``, behaviour included.

The batch contract: packet ``i`` is ``bufs[i][headroom:headroom + lengths[i]]`` on the way
out (the codec writes its header in front) and the whole datagram ``bufs[i][:lengths[i]]``
on the way in (the inner packet is then ``bufs[i][headroom:headroom + inner_lengths[i]]``,
the same room in both directions). ``verdicts[i]`` is set to
``DropReason.OK`` (0) or the reason it was dropped (and counted); the return value is the
number of packets with verdict OK, so ``0`` means there is nothing to send or write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class BatchCodec(Protocol):
    headroom: int  # bytes kept free in front of an outgoing inner packet (VXLAN + Ethernet, or 0)
    pending_tun: list[bytes]  # packets the codec wants written back into the TUN (ICMP errors); emptied by the caller

    def set_peer(self, subnet: int, vtep_mac: bytes | None, public_ip: str) -> None:
        """Add or replace the peer for ``subnet`` (its network address as an int); idempotent."""
        ...

    def remove_peer(self, subnet: int) -> None: ...

    def peer_count(self) -> int: ...

    def encap_batch(self, bufs: Sequence[Any], lengths: Sequence[int], count: int, verdicts: list[int],
                    dests: list[Any]) -> int:
        """TUN packets -> datagrams in place; ``dests[i]`` is the (ip, port) of each OK one."""
        ...

    def decap_batch(self, bufs: Sequence[Any], lengths: Sequence[int], senders: Sequence[str], count: int,
                    verdicts: list[int], inner_lengths: list[int], tos: Sequence[int] | None = None) -> int:
        """Datagrams from ``senders[i]`` (the sending IP, dotted) -> inner packets and their lengths.
        ``tos[i]``: the TOS byte of datagram i's outer IPv4 header, for its ECN field (RFC 6040),
        where the receiver knows it."""
        ...

    def drop_counts(self) -> list[int]:
        """Drops by ``DropReason`` value."""
        ...

    def count_drop(self, reason: int, n: int = 1) -> None:
        """Count drops decided outside the codec (I/O errors)."""
        ...
