"""One etcd keyspace as the subnet registry needs it: the v3 store and the v2 store behind one face.

etcd keeps its v2 and v3 keyspaces apart (a key written with ``etcdctl set`` is invisible to
``etcdctl get`` with the v3 API), and flanneld <= 0.17 speaks only v2 while >= 0.18 speaks only
v3 (flannel commit f4326fc8). ``EtcdRegistry`` holds flannel's lease logic once and talks to
either keyspace through this interface:

- ``get`` one value; ``list`` everything under a prefix, handed over a page at a time so a
  /8 of leases is never held twice, and the cursor to watch from (v3: the revision of the
  read; v2: ``X-Etcd-Index``);
- ``create`` if absent and ``put`` unconditionally, each with a TTL (v3: a fresh etcd lease,
  flannel ``pkg/subnet/etcd/registry.go``; v2: the key's ``ttl``, flannel v0.17.0
  ``subnet/etcdv2/registry.go``); a TTL of None writes a key that never expires (a reservation);
- ``watch`` a prefix from a cursor, yielding batches of changes, raising ``Compacted`` when the
  history is gone (v3 compaction, v2 error 401 EventIndexCleared) and ``EtcdUnavailable`` when
  no endpoint answers.

This module also holds what both clients share: endpoint parsing, the TLS files, the errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit


class EtcdError(RuntimeError):
    """etcd answered, but with an error that retrying elsewhere will not fix."""


class EtcdUnavailable(EtcdError):
    """No endpoint could be reached (or it timed out), or a lease went with a dead leader: worth retrying."""


class Compacted(EtcdError):
    """The watch cursor is older than the history etcd keeps: list again."""

    def __init__(self, revision: int, detail: str = "") -> None:
        super().__init__(detail or f"history before {revision} is gone (compacted)")
        self.revision = revision


class ApiMissing(EtcdError):
    """The server does not serve this API (etcd >= 3.4 without ``--enable-v2``)."""


@dataclass(frozen=True)
class TLSFiles:
    keyfile: str | None
    certfile: str | None
    cafile: str | None = None


@dataclass(frozen=True)
class Endpoint:
    url: str
    host: str
    port: int
    secure: bool

    @property
    def base(self) -> str:
        """``scheme://host:port`` without any path the user typed."""
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"


def parse_endpoints(text: str) -> list[Endpoint]:
    """``http://10.0.0.1:2379,https://etcd:2379`` -> endpoints; ValueError names a bad one."""
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{item!r} is not an etcd endpoint like http://127.0.0.1:2379")
        try:
            port = parts.port or 2379
        except ValueError:
            raise ValueError(f"{item!r} has an invalid port") from None
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        endpoints.append(Endpoint(item, host, port, parts.scheme == "https"))
    if not endpoints:
        raise ValueError("no etcd endpoints given")
    return endpoints


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    expires: bool = True  # False: a key without TTL or lease (a reservation)


@dataclass(frozen=True)
class WatchBatch:
    """Changes under the watched prefix; ``value`` None means deleted or expired."""

    changes: list[tuple[bytes, bytes | None]]
    cursor: int  # the next watch starts after this


class Store(Protocol):
    api: str  # "v3" or "v2"

    @property
    def where(self) -> str:
        """The endpoint in use, for log lines."""
        ...

    async def get(self, key: bytes) -> bytes | None: ...

    async def list(self, prefix: bytes, page: Callable[[list[KeyValue]], None]) -> int:
        """Hand every key/value under ``prefix`` to ``page``, some at a time, all from one
        snapshot; the cursor of that snapshot."""
        ...

    async def create(self, key: bytes, value: bytes, ttl_s: int | None) -> int | None:
        """Write ``key`` only if absent: the TTL granted (0 without one), or None if it exists."""
        ...

    async def put(self, key: bytes, value: bytes, ttl_s: int | None) -> int:
        """Write ``key`` unconditionally; the TTL granted (0 without one)."""
        ...

    async def delete(self, key: bytes) -> None: ...

    def watch(self, prefix: bytes, cursor: int) -> AsyncIterator[WatchBatch]: ...

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for any endpoint to answer; True once one does."""
        ...

    async def reconnect(self) -> None:
        """Drop the open connections (the local address they were made from may be gone); the
        next request makes new ones."""
        ...

    async def close(self) -> None: ...
