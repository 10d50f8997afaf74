"""The daemon's life cycle without root: a fake registry, a fake backend (recording what it is
told), a fake underlay interface. Start (flanneld's order: config, lease, backend, peers,
subnet.env, ready), peer changes from the registry, a registry that fails and is supervised,
our lease revoked (exit 0, as flanneld), a stop (every clean-up runs)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from vxlan import backends, daemon, netconf, supervise
from vxlan.backends import ROUTE, TUNNEL
from vxlan.config import parse_config
from vxlan.lease import Lease
from vxlan.registry import Deleted, OwnLeaseLost, Put, Reset

NET = ipaddress.IPv4Network


def lease(subnet: str, ip: str, backend_type: str = "vxlan") -> Lease:
    return Lease(NET(subnet), ip, backend_type, bytes.fromhex("0e0000000001") if backend_type == "vxlan" else None, 1)


class FakeRegistry:
    name = "fake"

    def __init__(self, changes: list) -> None:
        self.script = changes  # Change objects, or an Exception to raise, or a float to sleep
        self.acquired = False
        self.closed = False
        self.follows = 0

    async def get_config(self):
        return parse_config({"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}})

    async def acquire(self, config, public_ip, new_vtep_mac, v6=None):
        self.acquired = True
        own = Lease(NET("10.5.1.0/24"), public_ip, "vxlan", new_vtep_mac, 1)
        return own, [lease("10.5.2.0/24", "192.0.2.2"), lease("10.5.3.0/24", "192.0.2.3", "host-gw")]

    async def changes(self):
        self.follows += 1
        while self.script:
            item = self.script.pop(0)
            if isinstance(item, Exception):
                raise item
            if isinstance(item, float):
                await asyncio.sleep(item)
                continue
            yield item
        await asyncio.sleep(3600)

    async def keep_lease(self):
        return None

    async def release(self):
        return False

    def metrics(self):
        return {}

    async def close(self):
        self.closed = True


class FakeBackend:
    name = peer_type = "vxlan"
    device = "TUN fake0"
    hub = None

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.ctx = None

    def precheck(self, opts, iface, public_ip):
        self.log.append(("precheck", public_ip))

    async def start(self, ctx):
        self.ctx = ctx
        self.log.append(("start", str(ctx.own.subnet), ctx.mtu))
        ctx.cleanups.append(lambda: self.log.append(("cleanup",)))

    async def add_peer(self, lease):
        self.log.append(("add", str(lease.subnet)))
        return TUNNEL

    async def remove_peer(self, lease):
        self.log.append(("remove", str(lease.subnet)))

    def describe(self, lease, how):
        return "fake"

    def via(self, subnet):
        return TUNNEL if subnet != NET("10.5.9.0/24") else ROUTE

    def tasks(self):
        return []

    def started(self):
        return "VNI 1, port 8472", ""

    def on_usr1(self):
        return False

    def forward(self):
        self.log.append(("forward",))

    def descriptors(self):
        return {}

    def reload_handover(self):
        return {}, None

    def metrics(self):
        return {}


@pytest.fixture
def node(monkeypatch, tmp_path):
    """A daemon with fakes around it; returns (daemon, registry, backend, run)."""
    backend = FakeBackend()
    monkeypatch.setattr(daemon, "backend_for", lambda type_name: backend)
    monkeypatch.setattr(supervise, "BACKOFF_MIN_S", 0.01)
    iface = netconf.Iface("eth9", 9, "192.0.2.1", 1500)
    monkeypatch.setattr(netconf, "find_iface", lambda *a, **k: iface)
    monkeypatch.setattr(netconf, "iface_addresses", lambda index: ["192.0.2.1"])

    def make(script):
        registry = FakeRegistry(script)
        opts = daemon.Options(subnet_file=tmp_path / "subnet.env", iptables_forward_rules=False)
        return daemon.Daemon(opts, registry), registry
    return make, backend, tmp_path


def run_until(d: daemon.Daemon, condition, timeout: float = 5.0) -> int:
    """Run the daemon until ``condition(d)`` holds, then stop it as SIGTERM would; its exit status."""
    async def main():
        task = asyncio.create_task(d.run())
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition(d) and not task.done():
            assert asyncio.get_running_loop().time() < deadline, "condition never held"
            await asyncio.sleep(0.01)
        d._stop.set()
        return await asyncio.wait_for(task, 5)
    return asyncio.run(main())


def test_start_in_flanneld_order_then_stop(node):
    make, backend, tmp = node
    d, registry = make([])
    assert run_until(d, lambda d: d.ready) == 0
    # the backend was checked before the lease was taken, started after, then got the vxlan peer
    # (the host-gw lease is skipped: another backend)
    assert backend.log[0] == ("precheck", "192.0.2.1") and registry.acquired
    assert backend.log[1] == ("start", "10.5.1.0/24", 1450)
    assert backend.log[2] == ("add", "10.5.2.0/24")
    assert backend.log[3] == ("forward",)  # once the peers are programmed (a reload's bridge ends there)
    assert ("add", "10.5.3.0/24") not in backend.log
    env = (tmp / "subnet.env").read_text()
    assert "FLANNEL_SUBNET=10.5.1.1/24" in env and "FLANNEL_MTU=1450" in env
    assert backend.log[-1] == ("cleanup",) and registry.closed  # every clean-up ran
    assert [p["subnet"] for p in d.peer_report()] == ["10.5.2.0/24"]


def test_registry_changes_reach_the_backend(node):
    make, backend, _ = node
    script = [Put(lease("10.5.4.0/24", "192.0.2.4")), Deleted(NET("10.5.2.0/24")),
              Reset([lease("10.5.4.0/24", "192.0.2.4"), lease("10.5.5.0/24", "192.0.2.5")])]
    d, _ = make(script)
    run_until(d, lambda d: ("add", "10.5.5.0/24") in backend.log)
    assert backend.log[4:-1] == [("add", "10.5.4.0/24"), ("remove", "10.5.2.0/24"), ("add", "10.5.5.0/24")]
    assert len(d.peers) == 2


def test_a_failing_registry_watch_is_started_again(node):
    make, backend, _ = node
    d, registry = make([RuntimeError("etcd answered garbage"), Put(lease("10.5.6.0/24", "192.0.2.6"))])
    run_until(d, lambda d: ("add", "10.5.6.0/24") in backend.log)
    assert registry.follows == 2 and d.tasks.failures == 1


def test_our_lease_revoked_ends_the_daemon_with_0(node):
    make, backend, _ = node
    d, _ = make([0.05, OwnLeaseLost("Lease has been revoked.")])

    async def main():
        return await asyncio.wait_for(d.run(), 5)  # ends by itself
    assert asyncio.run(main()) == 0
    assert backend.log[-1] == ("cleanup",)


def test_a_backend_that_refuses_stops_start_up_before_the_lease(node, monkeypatch):
    make, backend, _ = node

    def refuse(opts, iface, public_ip):
        raise backends.StartupError("not with these options")
    monkeypatch.setattr(backend, "precheck", refuse)
    d, registry = make([])
    with pytest.raises(daemon.StartupError, match="not with these options"):
        asyncio.run(asyncio.wait_for(d.run(), 5))
    assert not registry.acquired and registry.closed
