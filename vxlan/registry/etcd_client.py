"""A small etcd v3 client on aetcd's gRPC stubs, with what a node agent needs on top.

Why not ``aetcd.Client`` itself: it talks to one host:port (a production etcd is a cluster and
flanneld takes a list of endpoints), has no TLS channel, cannot page a range read (its gRPC
channel keeps the 4 MiB receive limit, which one read of ~60,000 leases exceeds), and its watch
iterator hides the response headers, whose revision is the cursor to resume from
(flannel ``registry.go:watchSubnets``: ``since = header.Revision + 1``). The protobuf messages
and stubs are aetcd's (``aetcd.rpc``); this module adds endpoint failover, TLS, auth tokens,
paging and a raw watch stream.

Failover: every call runs on the current endpoint; when it is unreachable the client moves
to the next one and retries, once around the list. ``wait_ready`` lets a caller in backoff
wake up as soon as any endpoint accepts connections again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from aetcd import rpc

from vxlan.registry.store import (  # noqa: F401 (re-exported: the v3 client's errors and types)
    Compacted,
    Endpoint,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    TLSFiles,
    WatchBatch,
    parse_endpoints,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# gRPC reconnects quickly after an outage (its default backoff grows to 120 s).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 3_000),
    # each channel its own connections: a channel opened after a failover (or after the
    # underlay address changed) must not be handed the dead connection of the one it replaces
    ("grpc.use_local_subchannel_pool", 1),
]
_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
# leases per range read: ~1 MB, far below the 64 MiB receive limit; a /8 in 14 reads. Smaller
# pages cost etcd a count of the rest of the range each (2,000: 0.15 s more for a /8) and save
# under 2 MB once the heap is trimmed.
PAGE_SIZE = 5000


def range_end(prefix: bytes) -> bytes:
    """The end of the key range holding every key that starts with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class EtcdClient:
    def __init__(self, endpoints: list[Endpoint], tls: TLSFiles | None = None, username: str | None = None,
                 password: str | None = None, timeout_s: float = 3.0) -> None:
        self.endpoints = endpoints
        self.tls = tls
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._credentials = None
        if tls is not None:
            def read(path: str | None) -> bytes | None:
                if path is None:
                    return None
                with open(path, "rb") as f:
                    return f.read()
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read(tls.cafile), private_key=read(tls.keyfile),
                certificate_chain=read(tls.certfile))

    @property
    def endpoint(self) -> Endpoint:
        return self.endpoints[self._index]

    async def _open(self) -> grpc.aio.Channel:
        if self._channel is not None:
            return self._channel
        ep = self.endpoint
        target = f"{ep.host}:{ep.port}"
        if self._credentials is not None or ep.secure:
            creds = self._credentials or grpc.ssl_channel_credentials()
            channel = grpc.aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._channel = channel
        self._metadata = ()
        if self.username is not None:
            try:
                resp = await rpc.AuthStub(channel).Authenticate(
                    rpc.AuthenticateRequest(name=self.username, password=self.password or ""),
                    timeout=self.timeout_s)
            except grpc.aio.AioRpcError:
                await self._drop_channel()
                raise
            self._metadata = (("token", resp.token),)
        return channel

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close(grace=None)

    async def failover(self) -> None:
        """Close the current channel and move to the next endpoint."""
        await self._drop_channel()
        self._index = (self._index + 1) % len(self.endpoints)

    async def close(self) -> None:
        await self._drop_channel()

    async def _call(self, fn: Callable[[grpc.aio.Channel, tuple], Awaitable[T]]) -> T:
        """Run ``fn(channel, metadata)``, failing over once around the endpoint list."""
        last: Exception | None = None
        for _ in range(len(self.endpoints)):
            try:
                channel = await self._open()
                return await fn(channel, self._metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and "lease not found" in (exc.details() or ""):
                    # A lease granted by a leader that died before the grant was committed is gone
                    # after the election (etcd's ErrLeaseNotFound on the write that names it):
                    # transient, as the outage itself; the caller grants a new one and retries.
                    raise EtcdUnavailable(f"{self.endpoint.url}: {exc.details()} (lost in a leader change?)") from None
                if exc.code() not in _TRANSIENT:
                    raise EtcdError(f"{self.endpoint.url}: {exc.code().name}: {exc.details()}") from None
                last = exc
                log.debug("etcd endpoint %s failed (%s), trying the next one", self.endpoint.url, exc.code().name)
                await self.failover()
        detail = f"{last.code().name}: {last.details()}" if isinstance(last, grpc.aio.AioRpcError) else str(last)
        raise EtcdUnavailable(f"no etcd endpoint answered ({', '.join(e.url for e in self.endpoints)}): {detail}")

    async def wait_ready(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the current endpoint's channel to connect."""
        try:
            channel = await self._open()
            await asyncio.wait_for(channel.channel_ready(), timeout_s)
            return True
        except (TimeoutError, grpc.aio.AioRpcError):
            return False

    # -- KV ---------------------------------------------------------------------------------
    async def get(self, key: bytes) -> tuple[bytes | None, int]:
        """The value of ``key`` (None if absent) and the store revision of the read."""
        async def fn(ch, md):
            resp = await rpc.KVStub(ch).Range(rpc.RangeRequest(key=key), timeout=self.timeout_s, metadata=md)
            return (resp.kvs[0].value if resp.kvs else None), resp.header.revision
        return await self._call(fn)

    async def get_prefix(self, prefix: bytes, page: Callable[[list[KeyValue]], None],
                         page_size: int = PAGE_SIZE) -> int:
        """Every key/value under ``prefix`` as of one revision, read and handed to ``page`` in
        pages; the revision."""
        end = range_end(prefix)
        start, revision = prefix, 0
        while True:
            async def fn(ch, md, start=start, revision=revision):
                req = rpc.RangeRequest(key=start, range_end=end, limit=page_size, revision=revision)
                return await rpc.KVStub(ch).Range(req, timeout=self.timeout_s, metadata=md)
            resp = await self._call(fn)
            if not revision:
                revision = resp.header.revision  # later pages read the same snapshot
            page([KeyValue(kv.key, kv.value, kv.lease != 0) for kv in resp.kvs])
            if not resp.more or not resp.kvs:
                return revision
            start = resp.kvs[-1].key + b"\0"

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        async def fn(ch, md):
            resp = await rpc.KVStub(ch).Put(rpc.PutRequest(key=key, value=value, lease=lease),
                                            timeout=self.timeout_s, metadata=md)
            return resp.header.revision
        return await self._call(fn)

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> bool:
        """Put ``key`` only if it does not exist (its version is 0); True if it was created."""
        async def fn(ch, md):
            req = rpc.TxnRequest(
                compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, key=key, version=0)],
                success=[rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease))])
            resp = await rpc.KVStub(ch).Txn(req, timeout=self.timeout_s, metadata=md)
            return resp.succeeded
        return await self._call(fn)

    async def delete(self, key: bytes) -> int:
        async def fn(ch, md):
            resp = await rpc.KVStub(ch).DeleteRange(rpc.DeleteRangeRequest(key=key), timeout=self.timeout_s,
                                                    metadata=md)
            return resp.deleted
        return await self._call(fn)

    # -- leases -----------------------------------------------------------------------------
    async def grant(self, ttl_s: int) -> tuple[int, int]:
        """A new etcd lease: (id, granted TTL in seconds)."""
        async def fn(ch, md):
            resp = await rpc.LeaseStub(ch).LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl_s), timeout=self.timeout_s,
                                                      metadata=md)
            if resp.error:
                raise EtcdError(f"lease grant: {resp.error}")
            return resp.ID, resp.TTL
        return await self._call(fn)

    async def revoke(self, lease_id: int) -> None:
        async def fn(ch, md):
            await rpc.LeaseStub(ch).LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease_id), timeout=self.timeout_s,
                                                metadata=md)
        await self._call(fn)

    # -- watch ------------------------------------------------------------------------------
    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[rpc.WatchResponse]:
        """Yield watch responses for ``prefix`` from ``start_revision`` on the current endpoint.

        Raises Compacted when that revision is gone, EtcdUnavailable when the stream breaks
        (after moving to the next endpoint). Asks for a leader (flannel's WithRequireLeader), so
        a member cut off from its cluster ends the stream instead of going quiet.
        """
        create = rpc.WatchRequest(create_request=rpc.WatchCreateRequest(
            key=prefix, range_end=range_end(prefix), start_revision=start_revision))
        stop = asyncio.Event()

        async def requests():
            yield create
            await stop.wait()

        try:
            channel = await self._open()
            call = rpc.WatchStub(channel).Watch(requests(), metadata=(*self._metadata, ("hasleader", "true")))
            async for resp in call:
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise EtcdUnavailable(f"watch canceled by {self.endpoint.url}: {resp.cancel_reason}")
                yield resp
            raise EtcdUnavailable(f"watch stream from {self.endpoint.url} ended")
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in _TRANSIENT:
                raise EtcdError(f"{self.endpoint.url}: {exc.code().name}: {exc.details()}") from None
            failed = self.endpoint.url
            await self.failover()
            raise EtcdUnavailable(f"watch on {failed} broke: {exc.code().name}") from None
        finally:
            stop.set()


class V3Store:
    """The v3 keyspace as a ``store.Store``. A TTL is a fresh etcd lease per write, as flannel's
    ``registry.go:createSubnet``/``updateSubnet`` grant one (the old one just runs out)."""

    api = "v3"

    def __init__(self, client: EtcdClient) -> None:
        self.client = client

    @property
    def where(self) -> str:
        return self.client.endpoint.url

    async def get(self, key: bytes) -> bytes | None:
        value, _revision = await self.client.get(key)
        return value

    async def list(self, prefix: bytes, page: Callable[[list[KeyValue]], None]) -> int:
        return await self.client.get_prefix(prefix, page)

    async def create(self, key: bytes, value: bytes, ttl_s: int | None) -> int | None:
        lease_id, granted = await self.client.grant(ttl_s) if ttl_s else (0, 0)
        if await self.client.create(key, value, lease_id):
            return granted
        if lease_id:
            await self.client.revoke(lease_id)
        return None

    async def put(self, key: bytes, value: bytes, ttl_s: int | None) -> int:
        lease_id, granted = await self.client.grant(ttl_s) if ttl_s else (0, 0)
        await self.client.put(key, value, lease_id)
        return granted

    async def delete(self, key: bytes) -> None:
        await self.client.delete(key)

    async def watch(self, prefix: bytes, cursor: int) -> AsyncIterator[WatchBatch]:
        async for resp in self.client.watch_prefix(prefix, cursor + 1):
            yield WatchBatch([(ev.kv.key, None if ev.type == 1 else ev.kv.value)  # 1: mvccpb.Event.DELETE
                              for ev in resp.events], resp.header.revision)

    async def wait_ready(self, timeout_s: float) -> bool:
        return await self.client.wait_ready(timeout_s)

    async def reconnect(self) -> None:
        await self.client.close()  # the next call opens a channel again

    async def close(self) -> None:
        await self.client.close()
