"""Which etcd store a node uses (``--etcd-api auto|v2|v3``), and the one place etcd clients are built.

etcd keeps the v2 and v3 keyspaces apart. flanneld <= 0.17 reads and writes only v2, flanneld
>= 0.18 only v3 (flannel commit f4326fc8), and a node in the wrong keyspace waits forever for a
config it cannot see while its own lease is invisible to everyone else. ``--etcd-api auto``
(the default) therefore looks in both and follows the config:

- the config in v3 only: v3 (checked first: flanneld >= 0.18's store);
- in v2 only: v2 (an etcd started with ``--enable-v2``, as clusters of flanneld <= 0.17 run);
- in both: an error that names both values, since nodes split across the two cannot see each
  other;
- in neither: wait, say so once with both ``etcdctl`` commands, keep looking in both.

TLS and auth, for both stores and for every command that talks to etcd (the daemon, ``vxlanctl
doctor`` and ``plan``, the lab's flanneld emulator): ``--etcd-keyfile`` and
``--etcd-certfile`` go together (one alone is ignored with a warning, as flannel's v3
``newTlsConfig``); ``--etcd-cafile`` verifies the server's certificate, also alone (as flannel
v0.17's ``transport.TLSInfo``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from vxlan.config import NetworkConfig
from vxlan.lease import Lease
from vxlan.registry import Change, RegistryError
from vxlan.registry.etcd import DEFAULT_PREFIX, EtcdRegistry, parse_config_value, write_config_command
from vxlan.registry.store import EtcdUnavailable, Store, TLSFiles, parse_endpoints

log = logging.getLogger(__name__)

APIS = ("auto", "v3", "v2")


@dataclass(frozen=True)
class EtcdSettings:
    """flanneld's etcd flags plus ``--etcd-api``."""

    endpoints: str
    prefix: str = DEFAULT_PREFIX
    keyfile: str | None = None
    certfile: str | None = None
    cafile: str | None = None
    username: str | None = None
    password: str | None = None
    api: str = "auto"


def tls_files(s: EtcdSettings) -> TLSFiles | None:
    """The TLS files to use, or None for plain connections; ValueError names a bad flag."""
    key_cert = bool(s.keyfile and s.certfile)
    if (s.keyfile or s.certfile) and not key_cert:
        log.warning("--etcd-keyfile and --etcd-certfile go together; no client certificate is presented")
    if not key_cert and not s.cafile:
        return None
    tls = TLSFiles(s.keyfile if key_cert else None, s.certfile if key_cert else None, s.cafile)
    for flag, path in (("--etcd-keyfile", tls.keyfile), ("--etcd-certfile", tls.certfile),
                       ("--etcd-cafile", tls.cafile)):
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{flag} {path}: not readable")
    return tls


def open_store(s: EtcdSettings, api: str, timeout_s: float = 3.0) -> Store:
    """A client for one keyspace; ValueError names a bad flag."""
    endpoints = parse_endpoints(s.endpoints)
    if (s.username is None) != (s.password is None):
        raise ValueError("--etcd-username and --etcd-password go together")
    tls = tls_files(s)
    if api == "v2":
        from vxlan.registry.etcd_v2 import EtcdV2Store

        return EtcdV2Store(endpoints, tls=tls, username=s.username, password=s.password, timeout_s=timeout_s)
    from vxlan.registry.etcd_client import EtcdClient, V3Store

    return V3Store(EtcdClient(endpoints, tls=tls, username=s.username, password=s.password, timeout_s=timeout_s))


def registries_for(s: EtcdSettings, previous_subnet: ipaddress.IPv4Network | None = None,
                   renew_margin_s: float = 3600, timeout_s: float = 3.0,
                   previous_subnet6: ipaddress.IPv6Network | None = None) -> dict[str, EtcdRegistry]:
    """A registry for each store ``--etcd-api`` names (v3 and v2 for auto, v3 first);
    ValueError names a bad flag."""
    if s.api not in APIS:
        raise ValueError(f"--etcd-api {s.api!r}: must be one of {', '.join(APIS)}")
    return {api: EtcdRegistry(open_store(s, api, timeout_s), prefix=s.prefix, previous_subnet=previous_subnet,
                              renew_margin_s=renew_margin_s, previous_subnet6=previous_subnet6)
            for api in (("v3", "v2") if s.api == "auto" else (s.api,))}


def make_registry(s: EtcdSettings, previous_subnet: ipaddress.IPv4Network | None = None,
                  renew_margin_s: float = 3600, timeout_s: float = 3.0,
                  previous_subnet6: ipaddress.IPv6Network | None = None):
    """The registry ``--etcd-api`` asks for: one store's, or the auto-selecting one."""
    regs = registries_for(s, previous_subnet, renew_margin_s, timeout_s, previous_subnet6)
    return AutoRegistry(regs["v3"], regs["v2"]) if s.api == "auto" else regs[s.api]


@dataclass
class ConfigProbe:
    """What one look at ``<prefix>/config`` in each store found."""

    values: dict[str, bytes]  # api -> the config's value, where present
    absent: dict[str, str]  # api -> why not there ("" simply absent; else e.g. the v2 API is off)
    down: dict[str, str]  # api -> why etcd did not answer


async def probe_config(registries: dict[str, EtcdRegistry]) -> ConfigProbe:
    probe = ConfigProbe({}, {}, {})

    async def one(api: str, reg: EtcdRegistry) -> None:
        try:
            value = await reg.read_config()
        except EtcdUnavailable as exc:
            probe.down[api] = str(exc)
        except RegistryError as exc:
            probe.absent[api] = str(exc)
        else:
            if value is None:
                probe.absent[api] = ""
            else:
                probe.values[api] = value
    await asyncio.gather(*(one(api, reg) for api, reg in registries.items()))
    return probe


def choose_api(probe: ConfigProbe, key: str) -> str | None:
    """The store holding the config (v3 first), None if neither does; RegistryError if both do."""
    if "v3" in probe.values and "v2" in probe.values:
        raise RegistryError(
            f"the network config {key} is in both etcd stores: v3 holds {probe.values['v3'].decode(errors='replace')}"
            f" and v2 holds {probe.values['v2'].decode(errors='replace')}. Nodes that read different stores cannot "
            f"see each other's leases: delete the one not in use (ETCDCTL_API=2 etcdctl rm {key}, or "
            f"ETCDCTL_API=3 etcdctl del {key}), or pick one with --etcd-api v2|v3")
    return next((api for api in ("v3", "v2") if api in probe.values), None)


class AutoRegistry:
    """``--etcd-api auto``: looks for the config in both stores, then is the one that holds it."""

    def __init__(self, v3: EtcdRegistry, v2: EtcdRegistry, poll_s: float = 1.0) -> None:
        self.stores = {"v3": v3, "v2": v2}
        self.chosen: EtcdRegistry | None = None
        self.poll_s = poll_s

    @property
    def name(self) -> str:
        return self.chosen.name if self.chosen is not None else "etcd (v3 or v2)"

    @property
    def _active(self) -> EtcdRegistry:
        if self.chosen is None:
            raise RuntimeError("get_config first")
        return self.chosen

    async def get_config(self) -> NetworkConfig:
        key = self.stores["v3"].config_key.decode()
        said_missing = said_down = False
        while True:
            probe = await probe_config(self.stores)
            api = choose_api(probe, key)
            if api is not None:
                self.chosen = self.stores[api]
                other = "v2" if api == "v3" else "v3"
                await self.stores[other].close()  # not asked again: no idle channel to keep alive
                why = probe.absent.get(other) or probe.down.get(other) or f"nothing at {key}"
                log.info("network config found in the etcd %s store (%s); using it. The %s store: %s", api,
                         "flanneld >= 0.18's" if api == "v3" else "flanneld <= 0.17's, etcd --enable-v2", other, why)
                if said_missing:
                    log.info("found the network config at %s", key)
                return parse_config_value(key, probe.values[api])
            if len(probe.down) == len(self.stores):
                if not said_down:
                    log.warning("waiting for etcd: %s", probe.down["v3"])
                    said_down = True
            elif not said_missing:
                v2_note = f" (the v2 store: {probe.absent['v2']})" if probe.absent.get("v2") else ""
                log.warning("flannel config not found in etcd at %s, neither in the v3 store nor in the v2 store%s; "
                            "waiting for it in both. Write it with the API your other nodes use: %s (flanneld >= "
                            "0.18), or %s (flanneld <= 0.17)", key, v2_note, write_config_command("v3", key),
                            write_config_command("v2", key))
                said_missing = True
            await asyncio.sleep(self.poll_s)

    async def acquire(self, config: NetworkConfig, public_ip: str, new_vtep_mac: bytes,
                      v6: tuple[str | None, bytes] | None = None) -> tuple[Lease, list[Lease]]:
        return await self._active.acquire(config, public_ip, new_vtep_mac, v6)

    def changes(self) -> AsyncIterator[Change]:
        return self._active.changes()

    async def keep_lease(self) -> None:
        await self._active.keep_lease()

    async def release(self) -> bool:
        return await self._active.release()

    def metrics(self) -> dict[str, float]:
        return self.chosen.metrics() if self.chosen is not None else {"etcd_connected": 0.0}

    async def close(self) -> None:
        for reg in self.stores.values():
            await reg.close()
