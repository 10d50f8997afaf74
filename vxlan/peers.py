"""PeerTable: which remote VTEP serves which subnet, fed by lease events. Pure: no I/O.

Mirrors flannel's ``pkg/lease/lease.go:LeaseWatcher``: our own subnet is
never a peer; ``reset(snapshot)`` reports new and changed leases as added and vanished ones as
removed, unchanged ones not at all; a removal carries the stored lease so the data plane knows
what to unprogram. Leases of other backends are ignored as ``vxlan_network.go`` and
``route_network.go`` do ("Ignoring non-vxlan subnet"), also when a known peer's lease changes to
another backend: its programming stays as it was. During a rolling switch of the backend (say
host-gw to vxlan) that keeps a peer reachable until this node restarts with the new backend.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from vxlan.lease import Lease, lease_ident


@dataclass(frozen=True)
class PeerAdded:
    lease: Lease  # new, or replacing a lease for the same subnet


@dataclass(frozen=True)
class PeerRemoved:
    lease: Lease


@dataclass(frozen=True)
class PeerSkipped:
    lease: Lease
    reason: str


PeerEvent = PeerAdded | PeerRemoved | PeerSkipped


class PeerTable:
    def __init__(self, own_subnet: ipaddress.IPv4Network, subnet_len: int, backend_type: str | None = "vxlan",
                 own_subnet6: ipaddress.IPv6Network | None = None) -> None:
        self.own_subnet = own_subnet
        self._own_key = lease_ident(own_subnet, own_subnet6)
        self.subnet_len = subnet_len
        self.backend_type = backend_type
        # by Lease.ident (the IPv4 subnet as an int, as flannel's LeaseWatcher tells leases
        # apart by subnet): no IPv4Network per peer
        self._peers: dict[int, Lease] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def peers(self) -> list[Lease]:
        return sorted(self._peers.values(), key=lambda lease: lease.ident)

    def lookup(self, dst: ipaddress.IPv4Address) -> Lease | None:
        net = ipaddress.IPv4Network(f"{dst}/{self.subnet_len}", strict=False)
        return self._peers.get(lease_ident(net, None))

    def _admit(self, lease: Lease) -> str | None:
        """Why ``lease`` is no peer of ours, or None if it is one."""
        # vxlan_network.go:handleSubnetEvents and route_network.go compare BackendType exactly;
        # the udp backend (backend_type None) takes every lease (udp_network_amd64.go).
        if self.backend_type is not None and lease.backend_type != self.backend_type:
            return f"backend type {lease.backend_type or '(none)'} is not {self.backend_type}"
        if lease.prefixlen != self.subnet_len:
            return f"prefix length /{lease.prefixlen} differs from SubnetLen /{self.subnet_len}"
        return None

    def update(self, lease: Lease) -> list[PeerEvent]:
        """A lease was written (created or renewed)."""
        key = lease.ident
        if key == self._own_key:
            return []
        reason = self._admit(lease)
        if reason is not None:
            if key in self._peers:
                reason += "; the peer stays programmed as it was"
            return [PeerSkipped(lease, reason)]
        if self._peers.get(key) == lease:
            return []  # a renewal with the same attributes changes nothing on the data plane
        self._peers[key] = lease
        return [PeerAdded(lease)]

    def remove(self, subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None = None) -> list[PeerEvent]:
        """The lease at key ``subnet`` (& ``subnet6``) was deleted or expired. A deletion of a
        key that is not the one the peer holds now (a node's IPv4-only lease deleted after its
        dual-stack one was written, as a node switching to dual-stack does) removes nothing."""
        key = lease_ident(subnet, subnet6)
        held = self._peers.get(key)
        if held is None or (held.v6.subnet if held.v6 is not None else None) != subnet6:
            return []
        return self._remove(key)

    def _remove(self, key: int) -> list[PeerEvent]:
        old = self._peers.pop(key, None)
        return [PeerRemoved(old)] if old is not None else []

    def reset(self, snapshot: Iterable[Lease]) -> list[PeerEvent]:
        """Make the table equal ``snapshot``; return what changed."""
        leases = {lease.ident: lease for lease in snapshot}
        events: list[PeerEvent] = []
        for key in [k for k in self._peers if k not in leases]:
            events += self._remove(key)
        for lease in leases.values():
            events += self.update(lease)
        return events
