"""Static registry: flannel's config plus a ``subnets`` map of lease JSON in one file.

Format (the same data model as etcd: the config, and the lease JSON by subnet key)::

    {"config": {"Network": "172.7.0.0/16", "Backend": {"Type": "vxlan"}},
     "subnets": {"172.7.1.0-24": {"PublicIP": "198.18.0.1", "BackendType": "vxlan",
                                  "BackendData": {"VNI": 1, "VtepMAC": "0a:..."}}}}

The file is polled (stat every ``poll_s``) rather than watched with inotify: editors replace
files by rename, bind mounts and network file systems drop inotify events, and a stat a half
second costs nothing. A file that stops parsing is reported and the last good snapshot stays
in force, so a typo never tears down a running overlay.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vxlan.allocator import fits
from vxlan.config import NO_IPV4_NETWORK, ConfigError, NetworkConfig, parse_config
from vxlan.lease import (
    Lease,
    lease_backend_type,
    lease_from_attrs,
    lease_ident,
    network,
    parse_subnet_keys,
    subnet_key,
)
from vxlan.registry import AcquireError, Change, Reset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    config: NetworkConfig
    leases: dict[int, Lease]  # by Lease.ident (the subnet_key; IPv6-only: from the IPv6 subnet), in file order

    def lease(self, subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None = None) -> Lease | None:
        return self.leases.get(lease_ident(subnet, subnet6))


def parse_registry(raw: Any) -> Snapshot:
    """Validate a decoded registry document; raises ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError("(top level)", 'must be an object with "config" and "subnets"')
    if "config" not in raw:
        raise ConfigError("config", "missing: the flannel network config object")
    try:
        config = parse_config(raw["config"])
    except ConfigError as exc:
        raise ConfigError(f"config.{exc.field}", exc.reason) from None
    subnets = raw.get("subnets")
    if not isinstance(subnets, dict):
        raise ConfigError("subnets", 'missing or not an object mapping "10.5.1.0-24" to lease JSON')
    # by subnet_key, not IPv4Network: a /8 of them would cost 15 MB more while loading
    keys: dict[int, str] = {}
    v6: dict[int, ipaddress.IPv6Network] = {}  # the dual-stack keys' IPv6 subnets
    net_first, net_last = int(config.network.network_address), int(config.network.broadcast_address)
    for key in subnets:
        both = parse_subnet_keys(key)
        if both is None or not key.startswith(str(both[0].network_address)):
            raise ConfigError(_path(key), "key is not a subnet key like 10.5.34.0-24 (network address, '-', "
                              "prefix) or 10.5.34.0-24&fc00:0:0:22::-64 (dual-stack)")
        subnet, subnet6 = both
        if not config.ipv4 and (subnet.prefixlen or subnet6 is None):
            raise ConfigError(_path(key), "an IPv6-only network's keys are 0.0.0.0-0&<IPv6 subnet> (flannel's "
                              "MakeSubnetKey without an IPv4 subnet), e.g. 0.0.0.0-0&fc00:0:0:22::-64")
        k = lease_ident(subnet, subnet6)  # (subnet_key, but for IPv6-only keys: all share 0.0.0.0-0)
        if subnet6 is not None:
            if config.ipv6 is not None and not subnet6.subnet_of(config.ipv6.network):
                raise ConfigError(_path(key), f"subnet {subnet6} is not inside IPv6Network {config.ipv6.network}")
            v6[k] = subnet6
        first, last = _span(subnet_key(subnet))
        if first < net_first or last > net_last:
            raise ConfigError(_path(key), f"subnet {subnet} is not inside Network {config.network}")
        if k in keys:
            raise ConfigError(_path(key), f"subnet {subnet} overlaps {subnet}")
        keys[k] = key
    if config.ipv4:
        _check_overlaps(keys)
    _check_overlaps6(keys, v6)
    leases: dict[int, Lease] = {}
    owners: dict[str, str] = {}
    for k, attrs in zip(keys, subnets.values(), strict=True):
        key = keys[k]
        path = _path(key)
        lease = lease_from_attrs(network(k >> 6, k & 63) if k >= 0 else NO_IPV4_NETWORK, attrs, path, v6.get(k))
        if lease.backend_type in ("vxlan", "host-gw", ""):
            # a node is its PublicIP, an IPv6-only one (PublicIP 0.0.0.0 on all) its PublicIPv6
            owner, field = _owner(config, lease)
            if owner in owners:
                raise ConfigError(f"{path}.{field}", f"{owner} already holds {owners[owner]}; one lease per node")
            if owner is not None:
                owners[owner] = key
        leases[k] = lease
    return Snapshot(config=config, leases=leases)


def _owner(config: NetworkConfig, lease: Lease) -> tuple[str | None, str]:
    if config.ipv4:
        return lease.public_ip, "PublicIP"
    return (lease.v6.public_ip if lease.v6 is not None else None), "PublicIPv6"


def _path(key: str) -> str:
    return f"subnets[{json.dumps(key)}]"


def _span(k: int) -> tuple[int, int]:
    """First and last address of the subnet ``k`` (a Lease.subnet_key)."""
    first = k >> 6
    return first, first + (1 << (32 - (k & 63))) - 1


def _check_overlaps(keys: dict[int, str]) -> None:
    """No two subnets overlap: sorted by start, each must begin after every earlier one ends
    (n log n: a /8 of /24s is 65,536 leases; comparing every pair took minutes)."""
    order = {k: i for i, k in enumerate(keys)}  # file order, to name the later one
    widest: int | None = None
    for k in sorted(keys):  # by address, then prefix length (subnet_key's order)
        if widest is not None and _span(k)[0] <= _span(widest)[1]:
            later, other = (k, widest) if order[k] > order[widest] else (widest, k)
            raise ConfigError(_path(keys[later]), f"subnet {network(later >> 6, later & 63)} overlaps "
                              f"{network(other >> 6, other & 63)}")
        if widest is None or _span(k)[1] > _span(widest)[1]:
            widest = k


def _check_overlaps6(keys: dict[int, str], v6: dict[int, ipaddress.IPv6Network]) -> None:
    """No two IPv6 subnets of dual-stack keys overlap (the same sweep as ``_check_overlaps``)."""
    spans = sorted((int(s.network_address), int(s.broadcast_address), k) for k, s in v6.items())
    for (_, end, k), (start, _, k2) in zip(spans, spans[1:], strict=False):
        if start <= end:
            raise ConfigError(_path(keys[k2]), f"subnet {v6[k2]} overlaps {v6[k]}")


def load_registry(path: Path) -> Snapshot:
    """Read and validate the file; ConfigError names the file, the field and the reason, for any
    content (a file that is no text, JSON nested too deep, numbers Python will not convert)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    return parse_registry_bytes(data, path)


def parse_registry_bytes(data: bytes, path: Path | str) -> Snapshot:
    """The registry in ``data`` (the file ``path``'s content); ConfigError as load_registry."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start}): a registry file is JSON") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ConfigError(str(path), f"not usable JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(str(path), "not usable JSON: nested too deeply") from None
    try:
        return parse_registry(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc.field}", exc.reason) from None
    except RecursionError:
        raise ConfigError(str(path), "not usable: nested too deeply") from None


def unsafe_permissions(path: Path) -> str | None:
    """Why others than root and the file's owner could change the peers, or None. Whoever can
    write the registry can add a VTEP whose frames vxland then accepts."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_mode & 0o022:
        return f"{path} is writable by {'others' if st.st_mode & 0o002 else 'its group'} (mode {st.st_mode & 0o777:o})"
    if st.st_uid not in (0, os.geteuid()):
        return f"{path} belongs to uid {st.st_uid}, not to root or to vxland's user"
    return None


class FileRegistry:
    name = "file"

    def __init__(self, path: Path, poll_s: float = 0.5) -> None:
        self.path = path
        self.poll_s = poll_s
        self._stamp: tuple[int, int, int] | None = None
        self._snapshot: Snapshot | None = None
        self._own: Lease | None = None
        self.reload_errors = 0
        self._warned_permissions: str | None = None

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def get_config(self) -> NetworkConfig:
        self._stamp = self._stat()
        self._snapshot = load_registry(self.path)
        self._warn_permissions()
        return self._snapshot.config

    def _warn_permissions(self) -> None:
        why = unsafe_permissions(self.path)
        if why is not None and why != self._warned_permissions:
            log.warning("%s: whoever can write it can add a VTEP whose frames this node accepts; "
                        "chmod 644 and chown root it", why)
        self._warned_permissions = why

    async def acquire(self, config: NetworkConfig, public_ip: str, new_vtep_mac: bytes,
                      v6: tuple[str | None, bytes] | None = None) -> tuple[Lease, list[Lease]]:
        """flannel's reuse rule (local_manager.go:tryAcquireLease): the lease with our PublicIP
        (an IPv6-only node's: with our PublicIPv6, ``v6``'s first item). A static file is not
        written to, so there is no lease to create."""
        assert self._snapshot is not None, "get_config first"
        me, field = (public_ip, "PublicIP") if config.ipv4 else (v6[0] if v6 is not None else None, "PublicIPv6")
        for lease in self._snapshot.leases.values():
            if _owner(config, lease)[0] != me:
                continue
            if lease.backend_type != lease_backend_type(config):
                raise AcquireError(f"the lease {lease.key} for PublicIP {public_ip} has BackendType "
                                   f"{lease.backend_type!r}; the config's backend is {config.backend.type!r}")
            if not config.contains_subnet(lease.subnet):
                raise AcquireError(f"our lease {lease.key} is outside SubnetMin..SubnetMax or not "
                                   f"/{config.subnet_len} (flannel's isSubnetConfigCompat)")
            if not fits(config, lease.subnet, lease.v6.subnet if lease.v6 is not None else None):
                want = "an IPv6 subnet in IPv6SubnetMin..IPv6SubnetMax" if config.ipv6 else "no IPv6 subnet"
                raise AcquireError(f"our lease {lease.key} does not fit the config: EnableIPv6 asks for {want} "
                                   "(flannel's isIPv6SubnetConfigCompat)")
            self._own = lease
            others = [other for other in self._snapshot.leases.values() if other is not lease]
            # from here on only the config and our lease are compared against (the peers are
            # the peer table's): no second map of a /8 of leases
            self._snapshot = Snapshot(self._snapshot.config, {lease.ident: lease})
            return lease, others
        flag = "--public-ip" if config.ipv4 else "--public-ipv6"
        raise AcquireError(f"no lease in {self.path} has {field} {me}: add one for this node under "
                           f"\"subnets\", or pass the right {flag}")

    async def changes(self) -> AsyncIterator[Change]:
        """A Reset each time the file changes and still parses."""
        while True:
            await asyncio.sleep(self.poll_s)
            stamp = self._stat()
            if stamp == self._stamp:
                continue
            try:
                snapshot = load_registry(self.path)
            except ConfigError as exc:
                self._stamp = stamp
                self.reload_errors += 1
                log.error("registry file changed but is invalid, keeping the previous peers: %s", exc)
                continue
            self._warn_permissions()
            self._warn_fixed_parts(snapshot)
            own = self._own.ident if self._own else None
            yield Reset([lease for key, lease in snapshot.leases.items() if key != own])
            self._stamp = stamp  # only once applied: a follower started again reads it anew

    def _warn_fixed_parts(self, snapshot: Snapshot) -> None:
        """What a running node cannot change: its config and its own lease (flanneld reads both
        once at start). Say so instead of half-applying it."""
        assert self._snapshot is not None and self._own is not None
        if snapshot.config != self._snapshot.config:
            log.warning("the network config in the registry changed; restart vxland to apply it")
        own = snapshot.leases.get(self._own.ident)
        if own is None:
            log.warning("our own lease %s is gone from the registry; still forwarding with it", self._own.key)
        elif own != self._own:
            log.warning("our own lease %s changed; restart vxland to apply it", self._own.key)

    async def keep_lease(self) -> None:
        return None  # a static lease never expires

    async def release(self) -> bool:
        return False  # the file is the operator's to change

    def metrics(self) -> dict[str, float]:
        return {"lease_expiry_seconds": math.inf, "registry_reload_errors": self.reload_errors}

    async def close(self) -> None:
        return None
