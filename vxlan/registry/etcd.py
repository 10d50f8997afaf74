"""flannel's subnet registry on etcd: config, lease acquisition, renewal and the lease watch.

One logic for both of etcd's keyspaces (``store.Store``: v3 for flanneld >= 0.18, flannel
``pkg/subnet/etcd/``; v2 for flanneld <= 0.17, flannel v0.17.0 ``subnet/etcdv2/``), so that
vxland and kernel flanneld nodes of either era share one etcd:

- keys ``<prefix>/config`` and ``<prefix>/subnets/10.5.34.0-24``; lease JSON as flanneld
  writes it (``lease.Lease.to_json``);
- acquisition as ``tryAcquireLease`` (``allocator.choose_subnet``), created if absent with a
  24 h TTL (v3: a transaction on a fresh etcd lease; v2: ``prevExist=false&ttl=86400``). Where
  flanneld >= 0.18 exits on a lost race ("subnet already exists"), vxland picks again, up to 10
  times (``raceRetries``), as flanneld <= 0.17 did;
- renewal at expiry minus ``--subnet-lease-renew-margin`` with a fresh 24 h TTL and an
  unconditional write (``updateSubnet``), retried every minute on failure. A reservation (a
  lease key without TTL, flannel Documentation/reservations.md) is reused as it is and never
  renewed: flanneld rewrites it with a TTL (v3 always; 0.17 at its first renewal), so the
  reservation is gone a day after that node stops; vxland keeps it one;
- the watch from the snapshot cursor + 1, re-listing after a compaction (v3) or a cleared
  index (v2 error 401), or a reconnect (``WatchLeases``), with a 100 ms -> 5 s backoff that ends
  early once etcd is reachable again.

Keys or values that do not parse are skipped, counted and logged once each, as flannel's
"Ignoring bad subnet node": a re-list (after a compaction, a cleared v2 index, a reconnect)
that finds the same bad value again does not count it again.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import random
import time
from collections.abc import AsyncIterator, Iterator

from vxlan.allocator import OutOfSubnets, choose_subnet, own_lease
from vxlan.config import ConfigError, NetworkConfig, parse_config
from vxlan.lease import Lease, SubnetKeys, lease_from_value, parse_subnet_keys
from vxlan.registry import AcquireError, Change, Deleted, OwnLeaseLost, Put, RegistryError, Reset
from vxlan.registry.store import ApiMissing, Compacted, EtcdError, EtcdUnavailable, KeyValue, Store

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
SUBNET_TTL_S = 24 * 3600  # local_manager.go const subnetTTL
BAD_KEYS_KEPT = 200_000  # bad keys remembered so that a re-list does not count them again
RACE_RETRIES = 10  # local_manager.go const raceRetries
RENEW_RETRY_S = 60  # CompleteLease: "retry every 1 min" on a failed renewal
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0  # registry.go watch reconnect backoff
EXAMPLE_CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'


def write_config_command(api: str, key: str, config: str = EXAMPLE_CONFIG) -> str:
    """The etcdctl command that writes the network config into the ``api`` keyspace."""
    if api == "v2":
        return f"ETCDCTL_API=2 etcdctl set {key} '{config}'"
    return f"ETCDCTL_API=3 etcdctl put {key} '{config}'"


class EtcdRegistry:
    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX,
                 previous_subnet: ipaddress.IPv4Network | None = None, renew_margin_s: float = 3600,
                 lease_ttl_s: int | None = None, rng: random.Random | None = None,
                 previous_subnet6: ipaddress.IPv6Network | None = None) -> None:
        self.store = store
        self.name = f"etcd {store.api}"
        self.prefix = "/" + prefix.strip("/")
        self.config_key = f"{self.prefix}/config".encode()
        self.subnets_prefix = f"{self.prefix}/subnets/".encode()
        self.previous_subnet = previous_subnet
        self.previous_subnet6 = previous_subnet6  # FLANNEL_IPV6_SUBNET of --subnet-file
        self.renew_margin_s = renew_margin_s
        # VXLAND_LEASE_TTL_S exists for tests of renewal only: 24 h is flannel's fixed TTL.
        self.lease_ttl_s = lease_ttl_s or int(os.environ.get("VXLAND_LEASE_TTL_S", SUBNET_TTL_S))
        self.rng = rng or random.Random()
        self.own: Lease | None = None
        self.reserved = False  # our lease is a reservation: no TTL, never renewed
        self._expiry = 0.0  # time.monotonic() when our etcd lease runs out
        self._revision = 0
        self.connected = False
        self.skipped = 0  # unparsable keys and values seen
        self._warned: set[bytes] = set()
        self._bad: dict[bytes, int] = {}  # key -> hash of the bad value counted for it
        self.renewals = 0

    # -- reading ----------------------------------------------------------------------------
    async def get_config(self) -> NetworkConfig:
        """``<prefix>/config``; while it is missing or etcd is down, retry every second
        (main.go:getConfig) and say once what is wrong and how to fix it."""
        said_missing = said_down = False
        key = self.config_key.decode()
        while True:
            try:
                value = await self.read_config()
            except EtcdUnavailable as exc:
                if not said_down:
                    log.warning("waiting for etcd: %s", exc)
                    said_down = True
                await asyncio.sleep(1)
                continue
            if value is None:
                if not said_missing:
                    log.warning("flannel config not found in the etcd %s store at %s; waiting for it. Create it "
                                "with: %s", self.store.api, key, write_config_command(self.store.api, key))
                    said_missing = True
                await asyncio.sleep(1)
                continue
            config = parse_config_value(key, value)
            if said_missing:
                log.info("found the network config at %s", key)
            return config

    async def read_config(self) -> bytes | None:
        """One read of ``<prefix>/config`` (None: absent). RegistryError if this store cannot
        be used at all (the v2 API switched off)."""
        try:
            value = await self.store.get(self.config_key)
        except ApiMissing as exc:
            raise RegistryError(str(exc)) from None
        except EtcdUnavailable:
            self.connected = False
            raise
        except EtcdError as exc:
            raise RegistryError(f"reading {self.config_key.decode()}: {exc}") from None
        self.connected = True
        return value

    def _parse(self, key: bytes, value: bytes | None) -> tuple[SubnetKeys | None, Lease | None]:
        """(the key's subnets, lease) of a watched key; (None, None) for keys that are no subnet;
        lease None for a value that does not parse. Bad ones are counted and logged once per key."""
        subnets = parse_subnet_keys(key[len(self.subnets_prefix):].decode(errors="replace"))
        if value is None:  # deleted: nothing to parse, nothing bad left there
            self._bad.pop(key, None)
            return subnets, None
        if subnets is None:
            self._skip(key, value, "not a subnet, skipping")
            return None, None
        try:
            lease = lease_from_value(subnets[0], value, key.decode(errors="replace"), subnets[1])
        except (ValueError, UnicodeDecodeError) as exc:  # ConfigError is a ValueError
            self._skip(key, value, f"ignoring bad subnet node: {exc}")
        except RecursionError:  # any node may write here: a value nested too deep must not end the watch
            self._skip(key, value, "ignoring bad subnet node: JSON nested too deeply")
        else:
            self._bad.pop(key, None)
            return subnets, lease
        return subnets, None

    def _skip(self, key: bytes, value: bytes, why: str) -> None:
        fingerprint = hash(value)
        if self._bad.get(key) == fingerprint:
            return  # this very value was counted when first seen (a re-list finds it again)
        if len(self._bad) < BAD_KEYS_KEPT:
            self._bad[key] = fingerprint
        self.skipped += 1
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning("%s: %s", key.decode(errors="replace"), why)

    async def list_leases(self, reservations: set | None = None) -> tuple[list[Lease], int]:
        """Every parsable lease under ``<prefix>/subnets`` and the cursor of that snapshot; the
        idents of those without a TTL (reservations) go into ``reservations`` if given."""
        leases: list[Lease] = []

        def page(items: list[KeyValue]) -> None:
            for item in items:
                _, lease = self._parse(item.key, item.value)
                if lease is not None:
                    leases.append(lease)
                    if reservations is not None and not item.expires:
                        reservations.add(lease.ident)
        revision = await self.store.list(self.subnets_prefix, page)
        return leases, revision

    def _key(self, lease: Lease) -> bytes:
        return self.subnets_prefix + lease.key.encode()

    # -- our lease --------------------------------------------------------------------------
    async def acquire(self, config: NetworkConfig, public_ip: str, new_vtep_mac: bytes,
                      v6: tuple[str | None, bytes] | None = None) -> tuple[Lease, list[Lease]]:
        last_error = ""
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                got = await self._try_acquire(config, public_ip, new_vtep_mac, v6)
            except EtcdUnavailable as exc:
                last_error = str(exc)
                log.warning("acquiring a lease: %s; retrying", exc)
                await asyncio.sleep(1)
                continue
            except EtcdError as exc:
                raise AcquireError(f"failed to acquire lease: {exc}") from None
            if isinstance(got, str):
                last_error = got
                log.info("%s (taken by another node meanwhile); picking again (%d/%d)", got, attempt, RACE_RETRIES)
                continue
            lease, leases, revision, granted, reserved = got
            self.own, self.reserved = lease, reserved
            self._expiry = time.monotonic() + granted if granted else math.inf
            self._revision = revision
            self.connected = True
            return lease, [other for other in leases if other.ident != lease.ident]
        raise AcquireError(f"failed to acquire lease after {RACE_RETRIES} attempts: {last_error}")

    async def _try_acquire(self, config: NetworkConfig, public_ip: str, new_vtep_mac: bytes,
                           v6: tuple[str | None, bytes] | None):
        """One round of flannel's tryAcquireLease: list, choose, write. (lease, all leases, revision,
        granted TTL, reserved), or why the subnet was lost to a racing node."""
        reservations: set[int] = set()  # idents of the keys without TTL
        leases, revision = await self.list_leases(reservations)
        try:
            decision = choose_subnet(config, leases, public_ip, self.previous_subnet, self.rng, self.previous_subnet6,
                                     v6[0] if v6 is not None else None)
        except OutOfSubnets as exc:
            raise AcquireError(f"failed to acquire lease: {exc}") from None
        for stale in decision.delete_first:
            log.info("deleting our old lease %s: it no longer fits the config", stale.key)
            await self.store.delete(self._key(stale))
        lease = own_lease(config, decision, public_ip, new_vtep_mac, v6)
        key, value = self._key(lease), lease.to_json().encode()
        reserved = decision.reuse is not None and decision.reuse.ident in reservations
        if decision.reuse is not None:
            # updateSubnet: unconditional; a reservation keeps having no TTL
            granted = await self.store.put(key, value, None if reserved else self.lease_ttl_s)
            log.info("reusing our %s %s (VtepMAC kept)", "reservation" if reserved else "lease", lease.key)
        else:
            granted = await self.store.create(key, value, self.lease_ttl_s)
            if granted is None:
                return f"subnet {lease.key} already exists"
            log.info("acquired lease %s (etcd %s)", lease.key, self.store.api)
        return lease, leases, revision, granted, reserved

    async def keep_lease(self) -> None:
        """Renew at expiry - margin with a new etcd lease (registry.go:updateSubnet)."""
        assert self.own is not None
        if self.reserved:
            log.info("our lease %s is a reservation (no TTL): nothing to renew", self.own.key)
            return
        key, value = self._key(self.own), self.own.to_json().encode()
        while True:
            await asyncio.sleep(max(0.0, self._expiry - self.renew_margin_s - time.monotonic()))
            try:
                ttl = await self.store.put(key, value, self.lease_ttl_s)
            except EtcdError as exc:
                log.warning("renewing lease %s failed: %s; retrying in %d s", self.own.key, exc, RENEW_RETRY_S)
                await asyncio.sleep(min(RENEW_RETRY_S, max(1.0, self._expiry - time.monotonic())))
                continue
            self._expiry = time.monotonic() + ttl
            self.renewals += 1
            log.info("renewed lease %s for %d s", self.own.key, ttl)

    # -- watching ---------------------------------------------------------------------------
    async def changes(self) -> AsyncIterator[Change]:
        assert self.own is not None
        own_key = self._key(self.own)
        revision, relist, backoff = self._revision, False, BACKOFF_MIN_S
        while True:
            try:
                if relist:
                    change, revision = await self._relist()
                    yield change
                    if isinstance(change, OwnLeaseLost):
                        return
                    relist, self._revision = False, revision
                async for batch in self.store.watch(self.subnets_prefix, revision):
                    self.connected, backoff = True, BACKOFF_MIN_S
                    for change in self._batch_changes(batch.changes, own_key):
                        yield change
                        if isinstance(change, OwnLeaseLost):
                            return
                    revision = self._revision = batch.cursor  # a watch started again resumes here
            except Compacted as exc:
                log.info("watch from %d: %s; re-listing", revision + 1, exc)
                relist = True
            except EtcdUnavailable as exc:
                if self.connected:
                    log.warning("lost etcd (%s); forwarding continues with the peers we know", exc)
                self.connected, relist = False, True
                await asyncio.sleep(BACKOFF_MIN_S)
                await self.store.wait_ready(backoff)  # ends early once etcd answers again
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except EtcdError as exc:  # an answer we cannot use (auth, permissions...): keep trying
                log.error("watching %s: %s; retrying in %.1f s", self.subnets_prefix.decode(), exc, backoff)
                relist = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _relist(self) -> tuple[Change, int]:
        """After an outage or a compaction: every lease as one Reset, or our own lease lost."""
        assert self.own is not None
        leases, revision = await self.list_leases()
        if not self.connected:
            log.info("etcd is reachable again at %s", self.store.where)
        self.connected = True
        own = self.own.ident
        if not any(lease.ident == own for lease in leases):
            return OwnLeaseLost(f"our lease {self.own.key} is gone from etcd"), revision
        return Reset([lease for lease in leases if lease.ident != own]), revision

    def _batch_changes(self, changes: list, own_key: bytes) -> Iterator[Change]:
        """A watch batch as changes; our own key's deletion ends it with OwnLeaseLost."""
        for key, value in changes:
            if key == own_key:
                if value is None:
                    yield OwnLeaseLost("Lease has been revoked.")
                    return
                continue  # our own renewals
            subnets, lease = self._parse(key, value)
            if subnets is None:
                continue
            if value is None:
                yield Deleted(*subnets)
            elif lease is not None:
                yield Put(lease)

    async def release(self) -> bool:
        if self.own is None or self.reserved:
            return False  # a reservation is the operator's: it stays
        await self.store.reconnect()  # connections from the address that vanished are dead
        for attempt in (1, 2):
            try:
                await self.store.delete(self._key(self.own))
                break
            except EtcdUnavailable:
                # a connection made from the address that just vanished is dead; the client has
                # dropped it, and a second try connects from the address the host has now
                if attempt == 2:
                    raise
        log.info("released our lease %s (PublicIP %s)", self.own.key, self.own.public_ip)
        return True

    def metrics(self) -> dict[str, float]:
        return {
            "lease_expiry_seconds": max(0.0, self._expiry - time.monotonic()) if self.own else 0.0,
            "lease_reserved": 1.0 if self.reserved else 0.0,
            "etcd_connected": 1.0 if self.connected else 0.0,
            "registry_skipped_total": float(self.skipped),
            "lease_renewals_total": float(self.renewals),
        }

    async def close(self) -> None:
        await self.store.close()


def parse_config_value(key: str, value: bytes) -> NetworkConfig:
    """The config JSON as read from etcd; ConfigError with flannel's text if it is wrong."""
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(key, f"is not JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(key, "is not JSON: nested too deeply") from None
    return parse_config(raw)
