"""Which subnet a node gets: flannel's ``local_manager.go:tryAcquireLease`` rule. Pure: no I/O.

1. Reuse the lease that carries our PublicIP, if it still fits the config (flannel's
   ``isSubnetConfigCompat``); a lease that no longer fits is deleted first.
2. Else the previous subnet from ``--subnet-file``, if it fits and nobody holds it.
3. Else a uniformly random pick among the first 100 free subnets from SubnetMin to SubnetMax
   (``allocateSubnet``); none free is ``out of subnets``.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from vxlan.config import NetworkConfig
from vxlan.lease import Lease

MAX_CANDIDATES = 100  # flannel local_manager.go: "at most the first 100 free"


class OutOfSubnets(RuntimeError):
    def __init__(self) -> None:
        super().__init__("out of subnets")  # flannel's text


@dataclass(frozen=True)
class Decision:
    subnet: ipaddress.IPv4Network
    reuse: Lease | None = None  # our existing lease: overwrite it (keeping its VtepMAC)
    delete_first: list[Lease] = field(default_factory=list)  # our leases that no longer fit


def choose_subnet(config: NetworkConfig, leases: Iterable[Lease], public_ip: str,
                  previous: ipaddress.IPv4Network | None, rng: random.Random) -> Decision:
    leases = list(leases)
    stale: list[Lease] = []
    for lease in leases:
        if lease.public_ip == public_ip:
            if config.contains_subnet(lease.subnet):
                return Decision(subnet=lease.subnet, reuse=lease)
            stale.append(lease)
    # what is taken, as packed ranges (no IPv4Network per lease: a /8 holds 65,536)
    taken = sorted(_packed(lease.network_address, lease.prefixlen) for lease in leases if lease not in stale)
    if previous is not None and config.contains_subnet(previous):
        if not _overlaps_any(_packed(int(previous.network_address), previous.prefixlen), taken):
            return Decision(subnet=previous, delete_first=stale)
    return Decision(subnet=_pick(config, taken, rng), delete_first=stale)


def _packed(address: int, prefixlen: int) -> int:
    """A subnet as one sortable int: first address << 32 | last address."""
    return address << 32 | (address + (1 << (32 - prefixlen)) - 1)


def _overlaps_any(subnet: int, taken: list[int]) -> bool:
    """Whether the packed ``subnet`` overlaps one of the sorted packed ``taken``."""
    first, last = subnet >> 32, subnet & 0xFFFFFFFF
    i = bisect.bisect_right(taken, last << 32 | 0xFFFFFFFF)  # ranges that start at or before ``last``
    return any(taken[j] & 0xFFFFFFFF >= first for j in range(i))  # ... and end at or after ``first``


def pick_free(config: NetworkConfig, taken: Iterable[ipaddress.IPv4Network], rng: random.Random,
              exclude: Iterable[ipaddress.IPv4Network] = ()) -> ipaddress.IPv4Network:
    """Random among the first MAX_CANDIDATES subnets from SubnetMin that overlap nothing taken."""
    return _pick(config, sorted(_packed(int(s.network_address), s.prefixlen) for s in [*taken, *exclude]), rng)


def _pick(config: NetworkConfig, occupied: list[int], rng: random.Random) -> ipaddress.IPv4Network:
    step = 1 << (32 - config.subnet_len)
    candidates: list[int] = []
    sn, last = int(config.subnet_min), int(config.subnet_max)
    i = 0
    while sn <= last and len(candidates) < MAX_CANDIDATES:
        # skip occupied ranges that end before this subnet starts
        while i < len(occupied) and occupied[i] & 0xFFFFFFFF < sn:
            i += 1
        end = sn + step - 1
        if i < len(occupied) and occupied[i] >> 32 <= end:
            sn += step
            continue
        candidates.append(sn)
        sn += step
    if not candidates:
        raise OutOfSubnets()
    return ipaddress.IPv4Network((rng.choice(candidates), config.subnet_len))
