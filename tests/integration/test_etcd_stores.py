"""What differs between etcd's two stores, against a real etcd: ``--etcd-api auto`` following
the config, the v2 API switched off, the v2 watch (cleared index, idle polls, directories),
v2 reservations and v2 basic auth. What both stores share is tested in test_etcd.py."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest

from tests.integration.helpers import LocalEtcd
from vxlan import wire
from vxlan.registry import Put, RegistryError, Reset
from vxlan.registry.etcd import EtcdRegistry
from vxlan.registry.etcd_v2 import EtcdV2Store
from vxlan.registry.select import AutoRegistry, EtcdSettings, make_registry, open_store
from vxlan.registry.store import parse_endpoints

CONFIG = {"Network": "172.7.0.0/16", "Backend": {"Type": "vxlan"}}
CONFIG_KEY = "/coreos.com/network/config"
SUBNETS = "/coreos.com/network/subnets"


def lease(ip: str, mac: str = "0e:00:00:00:00:01") -> str:
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}})


def auto(etcd: LocalEtcd) -> AutoRegistry:
    reg = make_registry(EtcdSettings(etcd.url))
    assert isinstance(reg, AutoRegistry)
    reg.poll_s = 0.2
    return reg


def test_auto_follows_the_config_and_refuses_two(local_etcd, caplog):
    async def config_of(reg):
        try:
            return await asyncio.wait_for(reg.get_config(), 5), reg.name
        finally:
            await reg.close()

    # neither store: wait, say so once with both commands, pick the v2 store when written there
    async def wait_then_v2():
        reg = auto(local_etcd)
        task = asyncio.create_task(reg.get_config())
        await asyncio.sleep(1.0)
        assert not task.done()
        await asyncio.to_thread(local_etcd.put, CONFIG_KEY, json.dumps(CONFIG), "v2")
        await asyncio.wait_for(task, 3)
        await reg.close()
        return reg.name
    with caplog.at_level(logging.INFO):
        assert asyncio.run(wait_then_v2()) == "etcd v2"
    said = [r.getMessage() for r in caplog.records if "not found in etcd" in r.getMessage()]
    assert len(said) == 1, said
    assert "ETCDCTL_API=3 etcdctl put /coreos.com/network/config" in said[0]
    assert "ETCDCTL_API=2 etcdctl set /coreos.com/network/config" in said[0]
    assert any("found in the etcd v2 store" in r.getMessage() for r in caplog.records)

    # in both: an error naming both values
    other = {"Network": "10.9.0.0/16", "Backend": {"Type": "host-gw"}}
    local_etcd.put(CONFIG_KEY, json.dumps(other), "v3")
    with pytest.raises(RegistryError) as info:
        asyncio.run(config_of(auto(local_etcd)))
    text = str(info.value)
    assert "in both etcd stores" in text and json.dumps(other) in text and json.dumps(CONFIG) in text

    # in v3 only: v3
    local_etcd.delete(CONFIG_KEY, "v2")
    config, name = asyncio.run(config_of(auto(local_etcd)))
    assert name == "etcd v3" and str(config.network) == "10.9.0.0/16"


def test_v2_switched_off_is_one_clear_error():
    workdir = Path(tempfile.mkdtemp(prefix="vxlan-etcd-"))
    etcd = LocalEtcd(workdir, enable_v2=False)
    try:
        async def read(api):
            reg = make_registry(EtcdSettings(etcd.url, api=api))
            try:
                return await asyncio.wait_for(reg.get_config(), 5)
            finally:
                await reg.close()
        with pytest.raises(RegistryError, match="does not serve the v2 API.*--enable-v2=true"):
            asyncio.run(read("v2"))
        # auto still finds a v3 config there
        etcd.put(CONFIG_KEY, json.dumps(CONFIG))
        assert str(asyncio.run(read("auto")).network) == "172.7.0.0/16"
    finally:
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def joined(etcd: LocalEtcd, ip: str = "198.18.0.7", **store_kw) -> EtcdRegistry:
    store = EtcdV2Store(parse_endpoints(etcd.url), **store_kw)
    reg = EtcdRegistry(store)
    await reg.acquire(await reg.get_config(), ip, wire.random_vtep_mac())
    return reg


def churn(etcd: LocalEtcd, n: int) -> None:
    """``n`` writes outside the lease prefix: they move etcd's index, not our watch."""
    for i in range(n):
        req = urllib.request.Request(f"{etcd.url}/v2/keys/other/churn", data=f"value={i}".encode(), method="PUT")
        urllib.request.urlopen(req, timeout=5).read()


def test_v2_watch_relists_when_the_index_is_cleared(local_etcd):
    """etcd v2 keeps 1,000 events: a watch from further back gets error 401 EventIndexCleared,
    and flanneld (isIndexTooSmall) lists again. So does vxland, learning what it missed."""
    local_etcd.put(CONFIG_KEY, json.dumps(CONFIG), "v2")

    async def go():
        reg = await joined(local_etcd)
        changes = reg.changes()  # not started yet: its first poll comes after all this
        await asyncio.to_thread(local_etcd.put, f"{SUBNETS}/172.7.200.0-24", lease("198.18.0.20"), "v2")
        await asyncio.to_thread(churn, local_etcd, 1100)
        await asyncio.to_thread(local_etcd.put, f"{SUBNETS}/172.7.201.0-24", lease("198.18.0.21"), "v2")
        change = await asyncio.wait_for(anext(changes), 5)
        await reg.close()
        return change
    change = asyncio.run(go())
    assert isinstance(change, Reset)
    assert {str(x.subnet) for x in change.leases} == {"172.7.200.0/24", "172.7.201.0/24"}


def test_v2_idle_watch_survives_polls_and_a_busy_cluster(local_etcd, caplog):
    """No lease changes for many poll periods while 1,500 other writes happen: the watch
    re-polls from where etcd says it started, never falls out of the history window, and the
    next lease comes as a plain Put (no re-list)."""
    local_etcd.put(CONFIG_KEY, json.dumps(CONFIG), "v2")

    async def go():
        reg = await joined(local_etcd, watch_poll_s=0.2)
        changes = reg.changes()
        first = asyncio.ensure_future(anext(changes))
        for _ in range(3):
            await asyncio.to_thread(churn, local_etcd, 500)
            await asyncio.sleep(0.5)  # more than two poll periods each round
        assert not first.done()
        await asyncio.to_thread(local_etcd.put, f"{SUBNETS}/172.7.202.0-24", lease("198.18.0.22"), "v2")
        change = await asyncio.wait_for(first, 5)
        await reg.close()
        return change
    with caplog.at_level(logging.INFO):
        change = asyncio.run(go())
    assert isinstance(change, Put) and str(change.lease.subnet) == "172.7.202.0/24"
    assert not any("re-listing" in r.getMessage() for r in caplog.records)


def test_v2_bad_values_directories_and_deleted_directory(local_etcd):
    """Values that do not parse, keys that are no subnet and sub-directories are skipped and
    counted; deleting the whole directory (etcdctl rm --recursive) is noticed by a re-list."""
    local_etcd.put(CONFIG_KEY, json.dumps(CONFIG), "v2")
    local_etcd.put(f"{SUBNETS}/172.7.203.0-24", lease("198.18.0.23", "0e:00:00:00:00:03"), "v2")
    local_etcd.put(f"{SUBNETS}/172.7.204.0-24", "[" * 5000, "v2")
    local_etcd.put(f"{SUBNETS}/banana", "{}", "v2")
    local_etcd.etcdctl("mkdir", f"{SUBNETS}/adir", api="v2")

    async def go():
        reg = await joined(local_etcd)
        skipped_at_start = reg.skipped
        changes = reg.changes()
        nxt = asyncio.ensure_future(anext(changes))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(local_etcd.put, f"{SUBNETS}/172.7.205.0-24", "not json", "v2")
        await asyncio.to_thread(local_etcd.etcdctl, "rm", "--recursive", SUBNETS, api="v2")
        change = await asyncio.wait_for(nxt, 5)
        await reg.close()
        return skipped_at_start, reg.skipped, change
    at_start, later, change = asyncio.run(go())
    assert at_start >= 3  # the bad value, the non-subnet key, the directory
    assert later == at_start + 1  # the bad value written while watching
    # our own lease went with the directory: flanneld's "Lease has been revoked"
    assert type(change).__name__ == "OwnLeaseLost"


def test_v2_reservation_is_reused_and_kept_without_ttl(local_etcd):
    """A lease key without TTL is a reservation (Documentation/reservations.md): reused for
    the node with that PublicIP, rewritten without a TTL and never renewed."""
    local_etcd.put(CONFIG_KEY, json.dumps(CONFIG), "v2")
    local_etcd.put(f"{SUBNETS}/172.7.77.0-24", lease("198.18.0.7", "0e:00:00:00:00:77"), "v2")

    async def go():
        reg = await joined(local_etcd, "198.18.0.7")
        own = reg.own
        await asyncio.wait_for(reg.keep_lease(), 1)  # returns at once: nothing to renew
        await reg.close()
        return own, reg.metrics()
    own, metrics = asyncio.run(go())
    assert str(own.subnet) == "172.7.77.0/24" and own.vtep_mac == bytes.fromhex("0e0000000077")
    node = local_etcd.v2_node(f"{SUBNETS}/172.7.77.0-24")
    assert "ttl" not in node and json.loads(node["value"])["PublicIP"] == "198.18.0.7"
    assert metrics["lease_reserved"] == 1


def test_v2_basic_auth(local_etcd):
    """etcd v2 auth: a root user, auth on, the guest role stripped of its default access."""
    def call(method, path, body=None, auth=None):
        req = urllib.request.Request(f"{local_etcd.url}{path}", data=json.dumps(body).encode() if body else None,
                                     method=method, headers={"Content-Type": "application/json"})
        if auth:
            import base64
            req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        return urllib.request.urlopen(req, timeout=5).read()
    local_etcd.put(CONFIG_KEY, json.dumps(CONFIG), "v2")
    call("PUT", "/v2/auth/users/root", {"user": "root", "password": "s3cret"})
    call("PUT", "/v2/auth/enable")
    call("PUT", "/v2/auth/roles/guest", {"role": "guest", "revoke": {"kv": {"read": ["/*"], "write": ["/*"]}}},
         auth="root:s3cret")

    async def go(user, password):
        reg = EtcdRegistry(open_store(EtcdSettings(local_etcd.url, username=user, password=password), "v2"))
        try:
            config = await asyncio.wait_for(reg.get_config(), 5)
            return (await reg.acquire(config, "198.18.0.8", wire.random_vtep_mac()))[0]
        finally:
            await reg.close()
    assert asyncio.run(go("root", "s3cret")).public_ip == "198.18.0.8"
    with pytest.raises(RegistryError, match="--etcd-username"):
        asyncio.run(go("root", "wrong"))


def test_v3_watch_relists_after_a_compaction(local_etcd):
    """The history the watch would resume from is compacted away (etcdctl compact, as etcd's
    auto-compaction does): flannel's WatchLeases lists again; so does vxland."""
    local_etcd.put(CONFIG_KEY, json.dumps(CONFIG))

    async def go():
        reg = local_etcd.registry("v3")
        await reg.acquire(await reg.get_config(), "198.18.0.7", wire.random_vtep_mac())
        changes = reg.changes()  # not started: its watch will ask for a compacted revision
        await asyncio.to_thread(local_etcd.put, f"{SUBNETS}/172.7.210.0-24", lease("198.18.0.30"))
        await asyncio.to_thread(local_etcd.put, f"{SUBNETS}/172.7.211.0-24", lease("198.18.0.31"))
        rev = json.loads((await asyncio.to_thread(local_etcd.etcdctl, "get", CONFIG_KEY, "-w", "json")).stdout)
        await asyncio.to_thread(local_etcd.etcdctl, "compact", str(rev["header"]["revision"]))
        change = await asyncio.wait_for(anext(changes), 5)
        await reg.close()
        return change
    change = asyncio.run(go())
    assert isinstance(change, Reset)
    assert {str(x.subnet) for x in change.leases} == {"172.7.210.0/24", "172.7.211.0/24"}
