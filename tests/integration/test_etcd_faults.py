"""Faults of the environment with a running cluster, on both etcd stores: an outage (30 s
during a v2 long-poll watch), a member of a 3-member etcd going away, its leader killed during
20 concurrent joins, a prefix full of junk and a 1 MB lease, the underlay address changing.
Kept apart from test_etcd.py because they mostly wait, so a second test worker runs beside
them."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.integration.helpers import wait_for
from tests.integration.test_etcd import lease_value
from vxlan.lab import Lab, sh


@pytest.mark.parametrize("api,outage_s", [("v3", 10), ("v2", 30)])
def test_etcd_outage_loses_no_packet_and_late_joiner_is_learned(api, outage_s):
    """etcd down (10 s on v3, 30 s during a v2 long-poll watch): forwarding to known peers loses
    nothing, and a node that joined meanwhile is learned within 2 s of etcd's return."""
    with Lab(["vxland", "vxland", "vxland"], registry="etcd", defer=(3,), etcd_api=api) as lab:
        v1, v2, v3 = lab.hosts
        interval_s = 0.005 if outage_s <= 10 else 0.01
        count = int((outage_s + 3) / interval_s)
        flood = lab.popen(v1.pod_ns, ["ping", "-n", "-q", "-i", str(interval_s), "-c", str(count), "-W", "1",
                                      v2.pod_ip], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        lab.stop_etcd(lab.etcd[0])
        assert wait_for(lambda: lab.metrics(v1)["vxland_etcd_connected"] == 0, timeout=5)
        lab.start_node(v3, wait=False)  # joins while etcd is down: waits for it
        time.sleep(outage_s)
        assert v1.proc.poll() is None and lab.metrics(v1)["vxland_peers"] == 1
        lab.start_etcd(lab.etcd[0])  # returns once etcd answers
        learned = wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2, timeout=10)
        print(f"late joiner learned {learned} s after etcd answered again")
        assert learned is not None and learned < 6.0, f"learned after {learned}"  # contract: 2 s
        lab.wait_node(v3)
        out, _ = flood.communicate(timeout=outage_s + 30)
        assert re.search(rf"{count} packets transmitted, {count} received", out), out
        assert lab.ping(v3, v1, count=2).returncode == 0


def test_member_failover_keeps_watch_and_renewal(api):
    """3-member etcd, every member in --etcd-endpoints; vxland talks to the first. Stop it."""
    env = {"VXLAND_LEASE_TTL_S": "62"}  # with the 1-minute margin: renew every ~2 s
    with Lab(["vxland", "vxland"], registry="etcd", etcd_members=3, env=env, etcd_api=api) as lab:
        for host in lab.hosts:
            lab.stop_vxland(host)
            host.extra_args = ["--subnet-lease-renew-margin", "1"]
            lab.start_node(host)
        v1 = lab.hosts[0]
        assert wait_for(lambda: lab.metrics(v1)["vxland_lease_renewals_total"] >= 1, timeout=5)
        lab.stop_etcd(lab.etcd[0])
        stopped = time.monotonic()
        lab.put_lease("172.7.210.0-24", lease_value("198.18.0.99", "0e:00:00:00:00:09"),
                      endpoints=",".join(m.client_url for m in lab.etcd[1:]))
        assert wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2, timeout=6.0), lab.log(v1)[-2000:]
        print(f"member stopped -> new lease learned via another member: {time.monotonic() - stopped:.2f} s")
        renewals = lab.metrics(v1)["vxland_lease_renewals_total"]
        assert wait_for(lambda: lab.metrics(v1)["vxland_lease_renewals_total"] > renewals, timeout=5)
        assert lab.ping(v1, lab.hosts[1], count=2).returncode == 0


# 20 nodes joining at once, each with its own etcd client over every member (the lease
# protocol of vxlan.registry, as the daemon runs it, without a data plane each); prints
# "ready" once all have read the config, starts acquiring on a line from stdin, then prints
# one "subnet publicip" line per joiner (or "error ...").
JOINERS = """
import asyncio, sys
from vxlan.registry.select import EtcdSettings, make_registry
async def main(endpoints, api, n):
    regs = [make_registry(EtcdSettings(endpoints, api=api), timeout_s=2.0) for _ in range(int(n))]
    config = (await asyncio.gather(*(r.get_config() for r in regs)))[0]
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    async def join(i, reg):
        try:
            own, _ = await reg.acquire(config, f"198.18.3.{i + 1}", bytes([0x0e, 0, 0, 0, 3, i + 1]))
            return f"{own.subnet} 198.18.3.{i + 1}"
        except Exception as exc:
            return f"error {exc!r}"
    for line in await asyncio.gather(*(join(i, r) for i, r in enumerate(regs))):
        print(line, flush=True)
    for r in regs:
        await r.close()
asyncio.run(main(*sys.argv[1:]))
"""


def leader(lab: Lab):
    """The member that leads the etcd cluster now."""
    out = lab.etcdctl("endpoint", "status", "--write-out=json").stdout
    status = json.loads(out)
    leader_id = status[0]["Status"]["leader"]
    return next(m for m, s in zip(lab.etcd, status, strict=True) if s["Status"]["header"]["member_id"] == leader_id)


def test_leader_killed_during_20_concurrent_joins(api):
    """3-member etcd; 20 nodes acquire leases at once and the leader is killed (SIGKILL) as
    they start: every node gets a lease, no subnet twice, and the running vxland nodes learn
    all 20 (their watch moves to another member)."""
    with Lab(["vxland", "vxland"], registry="etcd", etcd_members=3, etcd_api=api) as lab:
        v1, v2 = lab.hosts
        joiners = lab.popen(lab.underlay_ns, [sys.executable, "-c", JOINERS, lab.etcd_endpoints, api, "20"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert joiners.stdout is not None and joiners.stdin is not None
        assert joiners.stdout.readline().strip() == "ready"
        doomed = leader(lab)
        joiners.stdin.write("go\n")
        joiners.stdin.flush()
        time.sleep(0.02)
        doomed.proc.kill()  # SIGKILL: no goodbye to the cluster
        doomed.proc.wait(5)
        doomed.proc = None
        out, _ = joiners.communicate(timeout=90)
        lines = out.split("\n")[:20]
        assert not [ln for ln in lines if ln.startswith("error")], out
        subnets = [ln.split()[0] for ln in lines]
        assert len(set(subnets)) == 20, out  # no subnet twice
        assert not set(subnets) & {str(v1.subnet), str(v2.subnet)}
        # etcd holds exactly those (and the two nodes'), each with its joiner's PublicIP
        held = {key.rsplit("/", 1)[1].replace("-", "/"): value["PublicIP"]
                for key, value in lab.etcd_leases().items()}
        assert {ln.split()[0]: ln.split()[1] for ln in lines}.items() <= held.items(), (held, out)
        # no lost peer: both running nodes have all 20 plus each other
        for host in (v1, v2):
            assert wait_for(lambda host=host: lab.metrics(host)["vxland_peers"] == 21, timeout=10), \
                (lab.metrics(host)["vxland_peers"], lab.log(host)[-2000:])
        assert lab.ping(v1, v2, count=2).returncode == 0


# 10,000 junk keys under <prefix>/subnets of five kinds, then one lease padded to 1 MB with a
# field flannel does not know (json.Unmarshal ignores it: a valid lease); written with the
# project's own store client, 64 at a time.
SEED_JUNK = """
import asyncio, json, sys
from vxlan.registry.select import EtcdSettings, open_store
async def main(endpoints, api, n):
    store = open_store(EtcdSettings(endpoints, api=api), api, timeout_s=30)
    prefix = "/coreos.com/network/subnets/"
    def item(i):
        key = f"172.7.{(i >> 6) & 255}.{(i & 63) * 4}-30"  # a subnet key; the value is the junk
        kind = i % 5
        if kind == 0:
            return f"junk-{i}", b"{}"  # no subnet key
        # the v2 store holds text only: its fourth kind is a lease of the wrong types
        odd = b"\\xff\\xfe\\x00" if api == "v3" else b'{"PublicIP": 42}'
        value = [b"not json", b"[1, 2]", b"[" * 1000 + b"]" * 1000, odd][kind - 1]
        return key, value
    sem = asyncio.Semaphore(64)
    async def put(key, value):
        async with sem:
            await store.put((prefix + key).encode(), value, None)
    await asyncio.gather(*(put(*item(i)) for i in range(int(n))))
    big = {"PublicIP": "198.18.0.250", "PublicIPv6": None, "BackendType": "vxlan",
           "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:fa:01"}, "Padding": "x" * (1 << 20)}
    await store.put((prefix + "172.7.250.0-24").encode(), json.dumps(big).encode(), None)
    await store.close()
asyncio.run(main(*sys.argv[1:]))
"""


def test_10000_junk_keys_and_a_1mb_lease(api):
    """A node starts into a prefix of 10,000 junk keys and a 1 MB lease: each junk key is
    skipped and counted exactly once, the big lease is a peer, forwarding works."""
    with Lab(["vxland", "vxland"], registry="etcd", etcd_api=api, defer=(2,)) as lab:
        v1, v2 = lab.hosts
        seed = lab.popen(lab.underlay_ns, [sys.executable, "-c", SEED_JUNK, lab.etcd_endpoints, api, "10000"],
                         stderr=subprocess.PIPE, text=True)
        _, err = seed.communicate(timeout=180)
        assert seed.returncode == 0, err
        started = time.monotonic()
        lab.start_node(v2, wait_s=60)
        print(f"etcd {api}: start to ready with 10,000 junk keys and a 1 MB lease: "
              f"{time.monotonic() - started:.2f} s")
        m = lab.metrics(v2)
        assert m["vxland_registry_skipped_total"] == 10_000
        assert m["vxland_peers"] == 2  # v1 and the padded lease
        assert "Traceback" not in lab.log(v2)
        # the running node saw the same arrive through its watch, one by one
        assert wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2, timeout=10)
        assert lab.metrics(v1)["vxland_registry_skipped_total"] == 10_000
        assert lab.ping(v2, v1, count=2).returncode == 0 and lab.ping(v1, v2, count=2).returncode == 0


def test_underlay_address_change_exits_1_and_the_restart_keeps_the_subnet(api):
    """The underlay address is changed under a running node (DHCP, an operator): it says so
    and exits 1, releasing the lease that names the dead address; started again (as systemd's
    Restart=on-failure would), it takes the same subnet with the new address, the peers learn
    it, and pods reach each other again."""
    with Lab(["vxland", "vxland"], registry="etcd", etcd_api=api) as lab:
        v1, v2 = lab.hosts
        subnet = v1.subnet
        old, new = v1.public_ip, "198.18.0.101"
        # as a DHCP client moves to a new lease: the old address goes, the new one comes (in
        # one batch: deleting a primary address takes the secondaries of its subnet with it)
        sh(["ip", "-batch", "-"], ns=v1.ns, input=f"address del {old}/24 dev eth0\naddress add {new}/24 dev eth0\n")
        assert v1.proc.wait(20) == 1  # noticed within 2 s; the release and the clean-up follow
        assert f"the underlay address {old} is gone (eth0 has {new} now)" in lab.log(v1), lab.log(v1)[-2000:]
        key = f"/coreos.com/network/subnets/{subnet.network_address}-{subnet.prefixlen}"
        assert wait_for(lambda: key not in lab.etcd_leases(), timeout=3), lab.log(v1)[-3000:]
        assert wait_for(lambda: lab.metrics(v2)["vxland_peers"] == 0, timeout=5)
        lab.start_node(v1)
        assert v1.subnet == subnet
        assert lab.etcd_leases()[key]["PublicIP"] == new
        assert wait_for(lambda: f"peer {subnet} via {new}" in lab.log(v2), timeout=5), lab.log(v2)[-1500:]
        assert lab.ping(v2, v1, count=2).returncode == 0 and lab.ping(v1, v2, count=2).returncode == 0
