"""The etcd v2 keyspace over HTTP (``httpclient``), as flanneld <= 0.17 uses it.

flanneld 0.10-0.17 talk to etcd through the v2 keys API only (flannel v0.17.0
``subnet/etcdv2/registry.go`` on the vendored ``go.etcd.io/etcd/client``); clusters set up for
them keep their config and leases in the v2 keyspace, which an etcd >= 3.4 serves only when
started with ``--enable-v2``. What is used, each request as flannel makes it:

- ``GET /v2/keys/<key>?quorum=true`` (config, one lease);
- ``GET /v2/keys/<prefix>/subnets?recursive=true&quorum=true``, cursor ``X-Etcd-Index``
  (``getSubnets``; a missing directory is an empty list at the index of the error);
- ``PUT`` with form ``value=<json>&ttl=86400``, with ``prevExist=false`` to create
  (``createSubnet``) and without to renew (``updateSubnet``); ``DELETE`` (``deleteSubnet``);
- the long-poll ``GET ...?wait=true&recursive=true&waitIndex=<cursor+1>``, next cursor the
  event's ``modifiedIndex``; actions ``delete``/``expire``/``compareAndDelete`` remove a lease,
  anything else writes one (``parseSubnetWatchResponse``); error 401 EventIndexCleared means
  the history window (1,000 events) moved past the cursor: list again (``isIndexTooSmall``).

An idle watch: etcd sends a long-poll's headers at once, ``X-Etcd-Index`` being the index the
watch started at, and the body only with an event. Nothing under the prefix changed up to that
index, so after ``watch_poll_s`` without an event the poll is re-issued from there; a quiet
prefix in a busy cluster therefore never falls out of the history window, and a connection
that died silently is noticed within one poll.

Endpoints fail over as in the v3 client: a request that cannot reach one endpoint moves to the
next, once around the list. TLS (``--etcd-cafile`` verifies the server; ``--etcd-certfile``
with ``--etcd-keyfile`` presents a client certificate) and basic auth
(``--etcd-username``/``--etcd-password``, etcd's v2 auth) as flannel's ``newEtcdClient``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote

from vxlan.registry.httpclient import HttpClient, HttpClientError
from vxlan.registry.store import (
    ApiMissing,
    Compacted,
    Endpoint,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    TLSFiles,
    WatchBatch,
)

log = logging.getLogger(__name__)

# etcd v2 error codes (etcd server/etcdserver/api/v2error/error.go)
KEY_NOT_FOUND, NODE_EXIST, UNAUTHORIZED, EVENT_INDEX_CLEARED = 100, 105, 110, 401
_TRANSIENT_CODES = {300, 301, 400}  # raft internal, leader election, watcher cleared by a recovery
_REMOVED = ("delete", "expire", "compareAndDelete")


class EtcdV2Store:
    api = "v2"

    def __init__(self, endpoints: list[Endpoint], tls: TLSFiles | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 3.0, watch_poll_s: float = 60.0) -> None:
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.watch_poll_s = watch_poll_s
        self._headers = {}
        if username is not None:  # HTTP basic auth, as the v2 client sends Username/Password
            token = base64.b64encode(f"{username}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
        self._ssl = self._ssl_context(tls) if tls is not None else None
        self._index = 0
        self._http = HttpClient(self._ssl, self._headers)

    @staticmethod
    def _ssl_context(tls: TLSFiles) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=tls.cafile)
        if tls.certfile and tls.keyfile:
            ctx.load_cert_chain(tls.certfile, tls.keyfile)
        return ctx

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index]

    @property
    def where(self) -> str:
        return self.endpoint.url

    @staticmethod
    def _path(key: bytes) -> str:
        return f"/v2/keys{quote(key.decode(errors='replace').rstrip('/'), safe='/')}"

    def _error(self, status: int, body: bytes) -> EtcdError:
        """An etcd error answer as the exception the callers handle."""
        url = self.endpoint.url
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or "errorCode" not in doc:
            if status == 404:
                return ApiMissing(f"etcd at {url} does not serve the v2 API (HTTP 404 on /v2/keys): start etcd "
                                  "with --enable-v2=true (etcd 3.4 turned it off by default; 3.5 is the last "
                                  "to have it), or use --etcd-api v3")
            text = body[:200].decode(errors="replace").strip()
            return EtcdUnavailable(f"{url}: HTTP {status}: {text}") if status >= 500 else \
                EtcdError(f"{url}: HTTP {status}: {text}")
        code, message, cause = doc.get("errorCode"), doc.get("message", ""), doc.get("cause", "")
        if code == EVENT_INDEX_CLEARED:
            return Compacted(int(doc.get("index", 0)), f"{message} ({cause})")
        if code in _TRANSIENT_CODES:
            return EtcdUnavailable(f"{url}: etcd error {code}: {message}")
        if code == UNAUTHORIZED or status in (401, 403):
            return EtcdError(f"{url}: {message or 'unauthorized'}: check --etcd-username and --etcd-password "
                             "(etcd v2 auth)")
        return EtcdError(f"{url}: etcd error {code}: {message}" + (f" ({cause})" if cause else ""))

    async def _request(self, method: str, key: bytes, params: dict[str, str] | None = None,
                       form: dict[str, str] | None = None, ok_codes: tuple[int, ...] = ()
                       ) -> tuple[dict[str, Any], int]:
        """One request with failover: (answer JSON, X-Etcd-Index). An etcd error whose code is
        in ``ok_codes`` is returned as its JSON instead of raised."""
        last = ""
        for _ in range(len(self.endpoints)):
            try:
                deadline = time.monotonic() + self.timeout_s
                resp = await self._http.request(self.endpoint, method, self._path(key), params, form, self.timeout_s)
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):  # not wait_for: httpclient.py
                    body = await resp.read()
                index = int(resp.headers.get("x-etcd-index", "0") or 0)
                if resp.status < 300:
                    return json.loads(body), index
                error = self._error(resp.status, body)
                if not isinstance(error, EtcdUnavailable):
                    doc = json.loads(body) if body[:1] == b"{" else {}
                    if doc.get("errorCode") in ok_codes:
                        return doc, int(doc.get("index", index))
                    raise error
                last = str(error)
            except (HttpClientError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                last = f"{self.endpoint.url}: {exc.__class__.__name__}: {exc}"
            log.debug("etcd v2 endpoint failed (%s), trying the next one", last)
            self._index = (self._index + 1) % len(self.endpoints)
        raise EtcdUnavailable(f"no etcd endpoint answered ({', '.join(e.url for e in self.endpoints)}): {last}")

    # -- Store ------------------------------------------------------------------------------
    async def get(self, key: bytes) -> bytes | None:
        doc, _ = await self._request("GET", key, {"quorum": "true"}, ok_codes=(KEY_NOT_FOUND,))
        node = doc.get("node")
        return None if node is None or node.get("dir") else str(node.get("value", "")).encode()

    async def list(self, prefix: bytes, page: Callable[[list[KeyValue]], None]) -> int:
        doc, index = await self._request("GET", prefix, {"recursive": "true", "quorum": "true"},
                                         ok_codes=(KEY_NOT_FOUND,))
        # One level, as getSubnets reads resp.Node.Nodes: a sub-directory has no value and is
        # skipped as a bad node by the caller.
        nodes = (doc.get("node") or {}).get("nodes") or []
        page([KeyValue(str(n.get("key", "")).encode(), str(n.get("value", "")).encode(), "ttl" in n)
              for n in nodes])
        return index

    async def create(self, key: bytes, value: bytes, ttl_s: int | None) -> int | None:
        form = {"value": value.decode(), **({"ttl": str(ttl_s)} if ttl_s else {})}
        doc, _ = await self._request("PUT", key, {"prevExist": "false"}, form, ok_codes=(NODE_EXIST,))
        if doc.get("errorCode") == NODE_EXIST:
            return None
        return int(doc.get("node", {}).get("ttl", 0))

    async def put(self, key: bytes, value: bytes, ttl_s: int | None) -> int:
        form = {"value": value.decode(), **({"ttl": str(ttl_s)} if ttl_s else {})}
        doc, _ = await self._request("PUT", key, None, form)
        return int(doc.get("node", {}).get("ttl", 0))

    async def delete(self, key: bytes) -> None:
        await self._request("DELETE", key, ok_codes=(KEY_NOT_FOUND,))

    async def watch(self, prefix: bytes, cursor: int) -> AsyncIterator[WatchBatch]:
        """Long-poll events under ``prefix`` after ``cursor``, one per batch, until an error."""
        while True:
            params = {"wait": "true", "recursive": "true", "waitIndex": str(cursor + 1)}
            url = self.endpoint.url
            try:
                # headers come at once (etcd flushes them); the body when an event happens
                resp = await self._http.request(self.endpoint, "GET", self._path(prefix), params, None, self.timeout_s)
                if resp.status >= 300:
                    async with asyncio.timeout(self.timeout_s):
                        body = await resp.read()
                    raise self._error(resp.status, body)
                started = int(resp.headers.get("x-etcd-index", "0") or 0)
                try:
                    async with asyncio.timeout(self.watch_poll_s):
                        body = await resp.read()
                except TimeoutError:
                    resp.close()  # abandoned mid-answer: this connection cannot be reused
                    cursor = max(cursor, started)  # nothing changed up to where the watch began
                    continue
            except (HttpClientError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                self._index = (self._index + 1) % len(self.endpoints)
                raise EtcdUnavailable(f"watch on {url} broke: {exc.__class__.__name__}: {exc}") from None
            try:
                event = json.loads(body)
                node = event["node"]
                cursor = int(node["modifiedIndex"])
            except (ValueError, KeyError, TypeError) as exc:
                raise EtcdUnavailable(f"watch on {url}: unreadable answer ({exc})") from None
            if node.get("dir"):
                # a directory at or under the prefix was removed or replaced: individual keys
                # went with it, so only a fresh list tells which
                raise Compacted(cursor, f"directory {node.get('key')} {event.get('action')}")
            removed = event.get("action") in _REMOVED
            yield WatchBatch([(str(node.get("key", "")).encode(),
                               None if removed else str(node.get("value", "")).encode())], cursor)

    async def wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            for i, ep in enumerate(self.endpoints):
                budget = max(0.1, min(1.0, deadline - time.monotonic()))
                try:
                    resp = await self._http.request(ep, "GET", "/version", timeout_s=budget)
                    async with asyncio.timeout(budget):
                        await resp.read()
                    if resp.status == 200:
                        self._index = i
                        return True
                except (HttpClientError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                    pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    async def reconnect(self) -> None:
        await self._http.close()  # idle keep-alive connections; the next request makes a new one

    async def close(self) -> None:
        await self._http.close()
