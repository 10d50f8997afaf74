"""How the etcd v3 client reads etcd's error answers (vxlan.registry.etcd_client._call)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from vxlan.registry.etcd_client import EtcdClient
from vxlan.registry.store import EtcdError, EtcdUnavailable, parse_endpoints


def answer(code: grpc.StatusCode, details: str):
    async def fn(_channel, _metadata):
        raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    return fn


def call(fn):
    async def main():
        client = EtcdClient(parse_endpoints("http://127.0.0.1:1"))
        try:
            return await client._call(fn)
        finally:
            await client.close()
    return asyncio.run(main())


def test_a_lease_lost_in_a_leader_change_is_transient():
    """A lease granted by a leader killed before the grant was committed is unknown after the
    election; the write naming it is retried with a new lease (acquire and renewal retry on
    EtcdUnavailable), not a reason to give up (it failed a 20-node join once)."""
    with pytest.raises(EtcdUnavailable, match="requested lease not found"):
        call(answer(grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found"))


def test_other_refusals_stay_errors():
    with pytest.raises(EtcdError) as info:
        call(answer(grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"))
    assert not isinstance(info.value, EtcdUnavailable)
