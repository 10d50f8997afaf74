"""Where leases live: ``file.FileRegistry`` (static JSON) or ``etcd.EtcdRegistry`` (etcd, either
keyspace: ``store``), picked by ``select`` from the flags (``--etcd-api auto`` finds the store
that holds the config).

Both give the daemon the same things in flanneld's order: the network config
(``get_config``), our own lease plus everyone else's (``acquire``), then a stream of
``Change``s that ``peers.PeerTable`` turns into peer events. Registries never import the data
plane; the daemon moves changes from one to the other.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from vxlan.config import NetworkConfig
from vxlan.lease import Lease
from vxlan.peers import PeerEvent, PeerTable


@dataclass(frozen=True)
class Reset:
    """The complete set of other nodes' leases (after start, a reconnect or a compaction)."""

    leases: list[Lease]


@dataclass(frozen=True)
class Put:
    lease: Lease  # created or renewed


@dataclass(frozen=True)
class Deleted:
    subnet: ipaddress.IPv4Network  # the key of a lease deleted or expired
    subnet6: ipaddress.IPv6Network | None = None  # a dual-stack key's IPv6 part


@dataclass(frozen=True)
class OwnLeaseLost:
    """Our own lease was deleted: flanneld logs it and exits 0 (main.go, LeaseWatcher)."""

    reason: str


Change = Reset | Put | Deleted | OwnLeaseLost


def peer_events(table: PeerTable, change: Change) -> list[PeerEvent] | None:
    """What a change does to the peer table (the events to program), or None when our own
    lease is gone (flanneld then shuts down). The one dispatch of the daemon and the emulator."""
    if isinstance(change, Reset):
        return table.reset(change.leases)
    if isinstance(change, Put):
        return table.update(change.lease)
    if isinstance(change, Deleted):
        return table.remove(change.subnet, change.subnet6)
    return None


class RegistryError(RuntimeError):
    """The registry cannot be used; the message says why and what to do."""


class AcquireError(RegistryError):
    """No lease for this node; the message says why and what to do."""


class Registry(Protocol):
    name: str  # "file", "etcd v3", "etcd v2": for logs and /metrics

    async def get_config(self) -> NetworkConfig: ...

    async def acquire(self, config: NetworkConfig, public_ip: str, new_vtep_mac: bytes,
                      v6: tuple[str | None, bytes] | None = None) -> tuple[Lease, list[Lease]]:
        """Our lease (reused or new) and the other leases known at that moment; ``v6`` is
        (PublicIPv6, a new IPv6 VtepMAC) for a dual-stack config."""
        ...

    def changes(self) -> AsyncIterator[Change]: ...

    async def keep_lease(self) -> None:
        """Renew our lease for as long as the daemon runs (returns only if nothing to do)."""
        ...

    async def release(self) -> bool:
        """Give our lease up because the PublicIP it names is gone (etcd: delete it, unless it
        is an operator's reservation); True if it was released."""
        ...

    def metrics(self) -> dict[str, float]:
        """Registry state for /metrics: name -> value (lease expiry, connection state...)."""
        ...

    async def close(self) -> None: ...
