"""Which subnet a node gets: flannel's ``local_manager.go:tryAcquireLease`` rule. Pure: no I/O.

1. Reuse the lease that carries our PublicIP, if it still fits the config (flannel's
   ``isSubnetConfigCompat``); a lease that no longer fits is deleted first.
2. Else the previous subnet from ``--subnet-file``, if it fits and nobody holds it.
3. Else a uniformly random pick among the first 100 free subnets from SubnetMin to SubnetMax
   (``allocateSubnet``); none free is ``out of subnets``.

With EnableIPv6 (``config.ipv6``) every step looks at the IPv6 subnet too, as flannel >= 0.15
does: a lease or previous subnet is reused only if its IPv6 subnet fits as well
(``isIPv6SubnetConfigCompat``; without EnableIPv6 a lease that has one does not fit), and a new
IPv6 subnet is picked the same way, independently of the IPv4 one.

IPv6-only (EnableIPv4 false): every lease's IPv4 half is 0.0.0.0/0 and its PublicIP 0.0.0.0,
so step 1 looks for the lease that carries our PublicIPv6 instead. flanneld's etcd manager
matches by PublicIP there too, which makes every IPv6-only node after the first reuse the first
one's lease (findLeaseByIP, local_manager.go v0.28.9); vxland does not copy that.
"""

from __future__ import annotations

import bisect
import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from vxlan.config import NO_IPV4_NETWORK, NetworkConfig
from vxlan.lease import Lease, LeaseV6, lease_backend_type

MAX_CANDIDATES = 100  # flannel local_manager.go: "at most the first 100 free"


class OutOfSubnets(RuntimeError):
    def __init__(self) -> None:
        super().__init__("out of subnets")  # flannel's text


@dataclass(frozen=True)
class Decision:
    subnet: ipaddress.IPv4Network
    reuse: Lease | None = None  # our existing lease: overwrite it (keeping its VtepMAC)
    delete_first: list[Lease] = field(default_factory=list)  # our leases that no longer fit
    subnet6: ipaddress.IPv6Network | None = None  # with EnableIPv6


def fits(config: NetworkConfig, subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None) -> bool:
    """isSubnetConfigCompat and isIPv6SubnetConfigCompat (local_manager.go) both."""
    if not config.contains_subnet(subnet):
        return False
    if config.ipv6 is None:
        return subnet6 is None
    return subnet6 is not None and config.ipv6.contains_subnet(subnet6)


def _ours(config: NetworkConfig, lease: Lease, public_ip: str, public_ipv6: str | None) -> bool:
    if config.ipv4:
        return lease.public_ip == public_ip
    return public_ipv6 is not None and lease.v6 is not None and lease.v6.public_ip == public_ipv6


def choose_subnet(config: NetworkConfig, leases: Iterable[Lease], public_ip: str,
                  previous: ipaddress.IPv4Network | None, rng: random.Random,
                  previous6: ipaddress.IPv6Network | None = None, public_ipv6: str | None = None) -> Decision:
    leases = list(leases)
    stale: list[Lease] = []
    if not config.ipv4:
        previous = NO_IPV4_NETWORK if previous6 is not None else None
    for lease in leases:
        if _ours(config, lease, public_ip, public_ipv6):
            subnet6 = lease.v6.subnet if lease.v6 is not None else None
            if fits(config, lease.subnet, subnet6):
                return Decision(subnet=lease.subnet, reuse=lease, subnet6=subnet6)
            stale.append(lease)
    # what is taken, as packed ranges (no IPv4Network per lease: a /8 holds 65,536)
    kept = [lease for lease in leases if lease not in stale] if stale else leases
    taken = sorted(_packed(lease.network_address, lease.prefixlen) for lease in kept)
    taken6 = sorted(_range6(lease.v6.subnet) for lease in kept if lease.v6 is not None) if config.ipv6 else []
    if previous is not None and fits(config, previous, previous6):
        free4 = not config.ipv4 or not _overlaps_any(_packed(int(previous.network_address), previous.prefixlen), taken)
        if free4 and (previous6 is None or not _overlaps6(_range6(previous6), taken6)):
            return Decision(subnet=previous, delete_first=stale, subnet6=previous6)
    subnet6 = _pick6(config, taken6, rng) if config.ipv6 is not None else None
    subnet = _pick(config, taken, rng) if config.ipv4 else NO_IPV4_NETWORK
    return Decision(subnet=subnet, delete_first=stale, subnet6=subnet6)


def _range6(subnet6: ipaddress.IPv6Network) -> tuple[int, int]:
    first = int(subnet6.network_address)
    return first, first + subnet6.num_addresses - 1


def _overlaps6(subnet6: tuple[int, int], taken6: list[tuple[int, int]]) -> bool:
    return any(first <= subnet6[1] and subnet6[0] <= last for first, last in taken6)


def _pick6(config: NetworkConfig, taken6: list[tuple[int, int]], rng: random.Random) -> ipaddress.IPv6Network:
    """allocateSubnet's IPv6 loop: random among the first MAX_CANDIDATES IPv6 subnets from
    IPv6SubnetMin that overlap no lease's IPv6 subnet (dual-stack clusters are small: a scan)."""
    assert config.ipv6 is not None
    step = 1 << (128 - config.ipv6.subnet_len)
    candidates: list[int] = []
    sn, last, i = int(config.ipv6.subnet_min), int(config.ipv6.subnet_max), 0
    while sn <= last and len(candidates) < MAX_CANDIDATES:
        while i < len(taken6) and taken6[i][1] < sn:
            i += 1
        if i < len(taken6) and taken6[i][0] <= sn + step - 1:
            sn = max(sn + step, (taken6[i][1] + 1) // step * step)  # past the taken range
            continue
        candidates.append(sn)
        sn += step
    if not candidates:
        raise OutOfSubnets()
    return ipaddress.IPv6Network((rng.choice(candidates), config.ipv6.subnet_len))


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


def own_lease(config: NetworkConfig, decision: Decision, public_ip: str, new_vtep_mac: bytes,
              v6: tuple[str | None, bytes] | None = None) -> Lease:
    """The lease this node writes for ``decision``: a reused lease keeps its VtepMACs (flannel's
    are stored in the lease and kept across restarts, vxlan.go ``GetStoredMacAddresses``);
    ``v6`` is (PublicIPv6, a new IPv6 VtepMAC) with EnableIPv6. host-gw leases carry no
    BackendData (hostgw.go), udp ones not even a type."""
    if config.backend.type != "vxlan":
        lease6 = LeaseV6(decision.subnet6, v6[0] if v6 else None) if decision.subnet6 is not None else None
        return Lease(decision.subnet, public_ip, lease_backend_type(config), v6=lease6)
    reused = decision.reuse
    lease6 = None
    if decision.subnet6 is not None:
        public_ipv6, new_mac6 = v6 if v6 is not None else (None, None)
        old_mac6 = reused.v6.vtep_mac if reused is not None and reused.v6 is not None else None
        mac6 = (old_mac6 or new_mac6) if public_ipv6 is not None else None  # newSubnetAttrs: no address, no data
        lease6 = LeaseV6(decision.subnet6, public_ipv6, mac6, config.backend.vni if mac6 is not None else None)
    if not config.ipv4:  # newSubnetAttrs (vxlan.go): no IPv4 device, no BackendData; PublicIP 0.0.0.0
        return Lease(decision.subnet, "0.0.0.0", "vxlan", v6=lease6)
    mac = (reused.vtep_mac if reused is not None else None) or new_vtep_mac
    return Lease(decision.subnet, public_ip, "vxlan", mac, config.backend.vni, v6=lease6)
