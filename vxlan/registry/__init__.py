"""Where leases live. ``file.FileRegistry`` (static JSON) now; etcd v3 next, same protocol.

A registry gives the network config and our own lease once (``start``), then a stream of
lease snapshots (``watch``) that ``peers.PeerTable.reset`` turns into peer events. Registries
never import the data plane.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from vxlan.config import NetworkConfig
from vxlan.lease import Lease


@dataclass(frozen=True)
class Snapshot:
    config: NetworkConfig
    leases: dict[ipaddress.IPv4Network, Lease]


class Registry(Protocol):
    async def start(self) -> Snapshot: ...

    def watch(self) -> AsyncIterator[Snapshot]: ...
