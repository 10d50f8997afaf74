"""flannel's subnet registry on etcd v3: config, lease acquisition, renewal and the lease watch.

Everything here copies flanneld (flannel-spec §1, §2 and §7, ``pkg/subnet/etcd/``) so that
vxland and kernel flanneld nodes share one etcd:

- keys ``<prefix>/config`` and ``<prefix>/subnets/10.5.34.0-24``; lease JSON as flanneld
  writes it (``lease.Lease.to_json``);
- acquisition as ``tryAcquireLease`` (``allocator.choose_subnet``), created with a
  create-if-absent transaction on a fresh 24 h etcd lease. Where flanneld >= 0.18 exits on a
  lost race ("subnet already exists"), vxland picks again, up to 10 times (``raceRetries``);
- renewal at expiry minus ``--subnet-lease-renew-margin`` with a *new* 24 h etcd lease and an
  unconditional put (``registry.go:updateSubnet``), retried every minute on failure;
- the watch from the snapshot revision + 1, re-listing after a compaction or a reconnect
  (``WatchLeases``), with a 100 ms -> 5 s backoff that ends early once etcd is reachable again.

Keys or values that do not parse are skipped, counted and logged once each, as flannel's
"Ignoring bad subnet node".
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator

from vxlan.allocator import OutOfSubnets, choose_subnet
from vxlan.config import ConfigError, NetworkConfig, parse_config
from vxlan.lease import Lease, lease_backend_type, lease_from_attrs, parse_subnet_key
from vxlan.registry import AcquireError, Change, Deleted, OwnLeaseLost, Put, Reset
from vxlan.registry.etcd_client import Compacted, EtcdClient, EtcdError, EtcdUnavailable

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
SUBNET_TTL_S = 24 * 3600  # local_manager.go const subnetTTL
RACE_RETRIES = 10  # local_manager.go const raceRetries
RENEW_RETRY_S = 60  # CompleteLease: "retry every 1 min" on a failed renewal
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0  # registry.go watch reconnect backoff
EXAMPLE_CONFIG = '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}'


class EtcdRegistry:
    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX,
                 previous_subnet: ipaddress.IPv4Network | None = None, renew_margin_s: float = 3600,
                 lease_ttl_s: int | None = None, rng: random.Random | None = None) -> None:
        self.client = client
        self.prefix = "/" + prefix.strip("/")
        self.config_key = f"{self.prefix}/config".encode()
        self.subnets_prefix = f"{self.prefix}/subnets/".encode()
        self.previous_subnet = previous_subnet
        self.renew_margin_s = renew_margin_s
        # VXLAND_LEASE_TTL_S exists for tests of renewal only: 24 h is flannel's fixed TTL.
        self.lease_ttl_s = lease_ttl_s or int(os.environ.get("VXLAND_LEASE_TTL_S", SUBNET_TTL_S))
        self.rng = rng or random.Random()
        self.own: Lease | None = None
        self._expiry = 0.0  # time.monotonic() when our etcd lease runs out
        self._revision = 0
        self.connected = False
        self.skipped = 0  # unparsable keys and values seen
        self._warned: set[bytes] = set()
        self.renewals = 0

    # -- reading ----------------------------------------------------------------------------
    async def get_config(self) -> NetworkConfig:
        """``<prefix>/config``; while it is missing or etcd is down, retry every second
        (main.go:getConfig) and say once what is wrong and how to fix it."""
        said_missing = said_down = False
        key = self.config_key.decode()
        while True:
            try:
                value, _ = await self.client.get(self.config_key)
                self.connected = True
            except EtcdUnavailable as exc:
                self.connected = False
                if not said_down:
                    log.warning("waiting for etcd: %s", exc)
                    said_down = True
                await asyncio.sleep(1)
                continue
            if value is None:
                if not said_missing:
                    log.warning("flannel config not found in etcd store at %s; waiting for it. Create it with:"
                                " etcdctl put %s '%s'", key, key, EXAMPLE_CONFIG)
                    said_missing = True
                await asyncio.sleep(1)
                continue
            try:
                raw = json.loads(value)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(key, f"is not JSON: {exc}") from None
            config = parse_config(raw)
            if said_missing:
                log.info("found the network config at %s", key)
            return config

    def _parse(self, key: bytes, value: bytes | None) -> tuple[ipaddress.IPv4Network | None, Lease | None]:
        """(subnet, lease) of a watched key; (None, None) for keys that are no subnet; lease None
        for a value that does not parse. Bad ones are counted and logged once per key."""
        subnet = parse_subnet_key(key[len(self.subnets_prefix):].decode(errors="replace"))
        if subnet is None:
            self._skip(key, "not a subnet, skipping")
            return None, None
        if value is None:
            return subnet, None
        try:
            return subnet, lease_from_attrs(subnet, json.loads(value), key.decode(errors="replace"))
        except (ValueError, UnicodeDecodeError) as exc:  # ConfigError is a ValueError
            self._skip(key, f"ignoring bad subnet node: {exc}")
            return subnet, None

    def _skip(self, key: bytes, why: str) -> None:
        self.skipped += 1
        if key not in self._warned and len(self._warned) < 10_000:
            self._warned.add(key)
            log.warning("%s: %s", key.decode(errors="replace"), why)

    async def list_leases(self) -> tuple[list[Lease], int]:
        """Every parsable lease under ``<prefix>/subnets`` and the revision of that snapshot."""
        items, revision = await self.client.get_prefix(self.subnets_prefix)
        leases = []
        for key, value in items:
            _, lease = self._parse(key, value)
            if lease is not None:
                leases.append(lease)
        return leases, revision

    def _key(self, subnet: ipaddress.IPv4Network) -> bytes:
        return self.subnets_prefix + f"{subnet.network_address}-{subnet.prefixlen}".encode()

    # -- our lease --------------------------------------------------------------------------
    async def acquire(self, config: NetworkConfig, public_ip: str, new_vtep_mac: bytes) -> tuple[Lease, list[Lease]]:
        last_error = ""
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                leases, revision = await self.list_leases()
                try:
                    decision = choose_subnet(config, leases, public_ip, self.previous_subnet, self.rng)
                except OutOfSubnets as exc:
                    raise AcquireError(f"failed to acquire lease: {exc}") from None
                for stale in decision.delete_first:
                    log.info("deleting our old lease %s: it no longer fits the config", stale.key)
                    await self.client.delete(self._key(stale.subnet))
                reused_mac = decision.reuse.vtep_mac if decision.reuse is not None else None
                if config.backend.type == "vxlan":
                    lease = Lease(decision.subnet, public_ip, "vxlan", reused_mac or new_vtep_mac, config.backend.vni)
                else:  # host-gw leases carry no BackendData (hostgw.go), udp ones not even a type
                    lease = Lease(decision.subnet, public_ip, lease_backend_type(config))
                key, value = self._key(lease.subnet), lease.to_json().encode()
                lease_id, ttl = await self.client.grant(self.lease_ttl_s)
                if decision.reuse is not None:
                    await self.client.put(key, value, lease_id)  # updateSubnet: unconditional
                    log.info("reusing our lease %s (VtepMAC kept)", lease.key)
                elif await self.client.create(key, value, lease_id):
                    log.info("acquired lease %s", lease.key)
                else:
                    await self.client.revoke(lease_id)
                    last_error = f"subnet {lease.key} already exists"
                    log.info("%s (taken by another node meanwhile); picking again (%d/%d)",
                             last_error, attempt, RACE_RETRIES)
                    continue
            except EtcdUnavailable as exc:
                last_error = str(exc)
                log.warning("acquiring a lease: %s; retrying", exc)
                await asyncio.sleep(1)
                continue
            except EtcdError as exc:
                raise AcquireError(f"failed to acquire lease: {exc}") from None
            self.own = lease
            self._expiry = time.monotonic() + ttl
            self._revision = revision
            self.connected = True
            return lease, [other for other in leases if other.subnet != lease.subnet]
        raise AcquireError(f"failed to acquire lease after {RACE_RETRIES} attempts: {last_error}")

    async def keep_lease(self) -> None:
        """Renew at expiry - margin with a new etcd lease (registry.go:updateSubnet)."""
        assert self.own is not None
        key, value = self._key(self.own.subnet), self.own.to_json().encode()
        while True:
            await asyncio.sleep(max(0.0, self._expiry - self.renew_margin_s - time.monotonic()))
            try:
                lease_id, ttl = await self.client.grant(self.lease_ttl_s)
                await self.client.put(key, value, lease_id)
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
        own_key = self._key(self.own.subnet)
        revision, relist, backoff = self._revision, False, BACKOFF_MIN_S
        while True:
            try:
                if relist:
                    leases, revision = await self.list_leases()
                    if not self.connected:
                        log.info("etcd is reachable again at %s", self.client.endpoint.url)
                    self.connected = True
                    if not any(lease.subnet == self.own.subnet for lease in leases):
                        yield OwnLeaseLost(f"our lease {self.own.key} is gone from etcd")
                        return
                    yield Reset([lease for lease in leases if lease.subnet != self.own.subnet])
                    relist = False
                async for resp in self.client.watch_prefix(self.subnets_prefix, revision + 1):
                    self.connected, backoff = True, BACKOFF_MIN_S
                    for event in resp.events:
                        key = event.kv.key
                        deleted = event.type == 1  # mvccpb.Event.DELETE
                        if key == own_key:
                            if deleted:
                                yield OwnLeaseLost("Lease has been revoked.")
                                return
                            continue  # our own renewals
                        subnet, lease = self._parse(key, None if deleted else event.kv.value)
                        if subnet is None:
                            continue
                        if deleted:
                            yield Deleted(subnet)
                        elif lease is not None:
                            yield Put(lease)
                    revision = resp.header.revision
            except Compacted as exc:
                log.info("watch revision %d was compacted (%s); re-listing", revision + 1, exc)
                relist = True
            except EtcdUnavailable as exc:
                if self.connected:
                    log.warning("lost etcd (%s); forwarding continues with the peers we know", exc)
                self.connected, relist = False, True
                await asyncio.sleep(BACKOFF_MIN_S)
                await self.client.wait_ready(backoff)  # ends early once etcd answers again
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            except EtcdError as exc:  # an answer we cannot use (auth, permissions...): keep trying
                log.error("watching %s: %s; retrying in %.1f s", self.subnets_prefix.decode(), exc, backoff)
                relist = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def metrics(self) -> dict[str, float]:
        return {
            "lease_expiry_seconds": max(0.0, self._expiry - time.monotonic()) if self.own else 0.0,
            "etcd_connected": 1.0 if self.connected else 0.0,
            "registry_skipped_total": float(self.skipped),
            "lease_renewals_total": float(self.renewals),
        }

    async def close(self) -> None:
        await self.client.close()
