"""A small flanneld emulator for the lab: a kernel node driven from etcd as flanneld drives it.

It takes a lease with the same registry code as vxland (flanneld's acquisition rule, on the
etcd v3 or v2 store: ``--etcd-api``), then programs the kernel with the commands of
``vxlan.plan``, as flanneld does for its backend:

- vxlan: ``flannel.<VNI>`` as ``pkg/backend/vxlan/device.go`` makes it, reused if it is already
  there from an earlier run (``ensureLink``: flanneld leaves it behind at exit; its MAC is set
  to our lease's); per remote vxlan lease a neighbour, an fdb entry and an onlink route, or with
  ``DirectRouting`` a plain route to a peer on a connected subnet (``vxlan_network.go``);
- host-gw: a route per peer (``route_network.go``);
- with EnableIPv6 (dual-stack), ``flannel-v6.<VNI>`` over the IPv6 underlay with the lease's
  BackendV6Data VtepMAC, and per remote dual-stack lease the same three entries over IPv6 (or,
  with ``DirectRouting``, a route via its PublicIPv6 when that is on a connected subnet).

Leases of another backend are ignored as flannel's backends ignore them. It exists so tests
and the demo have a kernel peer that learns from etcd; it is no replacement for flanneld (no
iptables, no health port).

    python -m vxlan.lab.flanneld_emu --etcd-endpoints http://198.18.0.250:2379 --iface eth0 \\
        --subnet-file /tmp/h3.env [--etcd-api v2] [--tx-checksum-off]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

# The emulator runs ip/bridge subprocesses while gRPC threads run: gRPC's fork handlers only
# log noise about that. Set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import uvloop  # noqa: E402

from vxlan import netconf, plan, subnetenv, wire  # noqa: E402
from vxlan.peers import PeerAdded, PeerEvent, PeerRemoved, PeerTable  # noqa: E402
from vxlan.registry import peer_events  # noqa: E402
from vxlan.registry.etcd import DEFAULT_PREFIX  # noqa: E402
from vxlan.registry.select import EtcdSettings, make_registry  # noqa: E402

log = logging.getLogger("flanneld-emu")


async def run_steps(steps: list[plan.Step], check: bool = True) -> None:
    for step in steps:
        proc = await asyncio.create_subprocess_exec(*step.cmd, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(step.cmd)}: {err.decode().strip()}")


class KernelNode:
    """flannel.<VNI> (and flannel-v6.<VNI>) and its peers; ``direct`` decides DirectRouting per
    event (vxlan_network.go)."""

    def __init__(self, dev: str | None, direct_routing: bool, dev6: str | None = None) -> None:
        self.dev = dev
        self.dev6 = dev6
        self.direct_routing = direct_routing
        self.routed: set = set()  # subnets reached by a direct route

    async def program(self, events: list[PeerEvent]) -> None:
        for event in events:
            if self.dev6 is not None and isinstance(event, PeerAdded | PeerRemoved):
                await self._program6(event)
            lease = event.lease
            if self.dev is None or lease.vtep_mac is None:
                continue  # an IPv6-only node or lease: no IPv4 half (vxlan_network.go needs BackendData)
            if isinstance(event, PeerAdded):
                if self.direct_routing and await asyncio.to_thread(netconf.is_directly_connected, lease.public_ip):
                    await run_steps([plan.direct_route(lease)])
                    self.routed.add(lease.subnet)
                    log.info("programmed %s via %s (direct route)", lease.subnet, lease.public_ip)
                    continue
                self.routed.discard(lease.subnet)
                await run_steps(plan.vxlan_peer(self.dev, lease))
                log.info("programmed %s via %s (%s)", lease.subnet, lease.public_ip, wire.mac_to_str(lease.vtep_mac))
            elif isinstance(event, PeerRemoved):  # errors ignored, as flannel does
                if lease.subnet in self.routed:
                    self.routed.discard(lease.subnet)
                    await run_steps([plan.direct_route_removed(lease)], check=False)
                else:
                    await run_steps(plan.vxlan_peer_removed(self.dev, lease), check=False)
                log.info("removed %s via %s", lease.subnet, lease.public_ip)


    async def _program6(self, event: PeerEvent) -> None:
        """A dual-stack peer's IPv6 half, as vxlan_network.go: through flannel-v6, or with
        DirectRouting and its PublicIPv6 on a connected subnet a route via it (v6DirectRoute)."""
        assert self.dev6 is not None
        v6 = event.lease.v6
        if v6 is None or v6.vtep_mac is None or v6.public_ip is None:
            return
        if isinstance(event, PeerRemoved):
            if v6.subnet in self.routed:
                self.routed.discard(v6.subnet)
                await run_steps([plan.Step("gone", ["ip", "-6", "route", "del", str(v6.subnet)])], check=False)
            else:
                await run_steps(plan.vxlan_peer_v6_removed(self.dev6, event.lease), check=False)
        elif self.direct_routing and await asyncio.to_thread(netconf.is_directly_connected, v6.public_ip):
            await run_steps([plan.direct_route6(event.lease)])
            self.routed.add(v6.subnet)
        else:
            self.routed.discard(v6.subnet)
            await run_steps(plan.vxlan_peer_v6(self.dev6, event.lease))


class HostGwNode:
    """flannel's host-gw backend (route_network.go): ``S via P dev IFACE`` per peer."""

    def __init__(self, iface: str) -> None:
        self.iface = iface

    async def program(self, events: list[PeerEvent]) -> None:
        for event in events:
            lease = event.lease
            if isinstance(event, PeerAdded):
                await run_steps([plan.direct_route(lease, self.iface)])
                log.info("route %s via %s", lease.subnet, lease.public_ip)
            elif isinstance(event, PeerRemoved):
                await run_steps([plan.direct_route_removed(lease)], check=False)


async def ensure_device(own, config, iface, mtu: int) -> str:
    """device.go:ensureLink: keep a compatible flannel.<VNI> from an earlier run, else make it."""
    backend = config.backend
    steps = plan.vxlan_device(backend.vni, backend.port, own.vtep_mac, iface.address, iface.name, mtu, own.subnet)
    dev = plan.device_name(backend.vni)
    probe = await asyncio.create_subprocess_exec("ip", "link", "show", dev, stdout=asyncio.subprocess.DEVNULL,
                                                 stderr=asyncio.subprocess.DEVNULL)
    if await probe.wait() == 0:
        log.info("%s exists from an earlier run: reusing it", dev)
        await run_steps([plan.Step("down", ["ip", "link", "set", dev, "down"]),
                         plan.Step("MAC", ["ip", "link", "set", dev, "address", wire.mac_to_str(own.vtep_mac)])])
        steps = steps[1:]
    await run_steps(steps)
    return dev


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = EtcdSettings(endpoints=args.etcd_endpoints, prefix=args.etcd_prefix, keyfile=args.etcd_keyfile,
                            certfile=args.etcd_certfile, cafile=args.etcd_cafile, api=args.etcd_api)
    registry = make_registry(settings, previous_subnet=subnetenv.previous_subnet(args.subnet_file),
                             previous_subnet6=subnetenv.previous_subnet6(args.subnet_file))
    config = await registry.get_config()
    iface = await asyncio.to_thread(netconf.find_iface, args.iface, None)
    v6 = (await ipv6_address(iface.name), wire.random_vtep_mac()) if config.ipv6 is not None else None
    own, others = await registry.acquire(config, iface.address, wire.random_vtep_mac(), v6)
    mtu = config.tun_mtu(iface.mtu)
    ipv6 = (config.ipv6.network, own.v6.subnet) if config.ipv6 is not None and own.v6 is not None else None
    network, subnet = (config.network, own.subnet) if config.ipv4 else (None, None)  # (IPv6-only: none)
    if config.backend.type == "host-gw":
        node: KernelNode | HostGwNode = HostGwNode(iface.name)
        peers = PeerTable(own.subnet, config.subnet_len, "host-gw")
        await node.program(peers.reset(others))
        subnetenv.write(args.subnet_file, config.network, own.subnet, mtu, ipv6=ipv6)
        log.info("flanneld-emu started: backend host-gw, subnet %s, VtepMAC none, %d peers", own.subnet, len(peers))
        return await follow_until_stopped(registry, node, peers, stop)
    dev = None  # an IPv6-only node has flannel-v6.<VNI> alone (vxlan.go: no IPv4 device without EnableIPv4)
    if config.ipv4:
        assert own.vtep_mac is not None
        dev = await ensure_device(own, config, iface, mtu)
        if args.tx_checksum_off:  # veth has no checksum hardware (see README, troubleshooting)
            await run_steps([plan.Step("tx off", ["ethtool", "-K", dev, "tx", "off"])])
    dev6 = None
    if own.v6 is not None and own.v6.vtep_mac is not None and own.v6.public_ip is not None:
        dev6 = plan.device_name_v6(config.backend.vni)
        await run_steps(plan.vxlan_device_v6(config.backend.vni, config.backend.port, own.v6.vtep_mac,
                                             own.v6.public_ip, iface.name, mtu, own.v6.subnet))
        if args.tx_checksum_off:
            await run_steps([plan.Step("tx off", ["ethtool", "-K", dev6, "tx", "off"])])
    node = KernelNode(dev, config.backend.direct_routing, dev6)
    peers = PeerTable(own.subnet, config.subnet_len, own_subnet6=own.v6.subnet if own.v6 else None)
    await node.program(peers.reset(others))
    subnetenv.write(args.subnet_file, network, subnet, mtu, ipv6=ipv6)
    log.info("flanneld-emu started: subnet %s, VtepMAC %s, VNI %d, port %d, %d peers (etcd %s)",
             own.subnet, wire.mac_to_str(own.vtep_mac or b""), config.backend.vni, config.backend.port, len(peers),
             registry.name)
    return await follow_until_stopped(registry, node, peers, stop)


async def ipv6_address(iface: str) -> str | None:
    """The interface's first global IPv6 address (flannel's GetInterfaceIP6Addrs also takes
    link-local ones; the lab's underlay has a global one), or None."""
    proc = await asyncio.create_subprocess_exec("ip", "-j", "-6", "addr", "show", "dev", iface, "scope", "global",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    for link in json.loads(out or b"[]"):
        for addr in link.get("addr_info", []):
            return addr["local"]
    return None


async def follow_until_stopped(registry, node, peers: PeerTable, stop: asyncio.Event) -> int:
    async def follow() -> None:
        async for change in registry.changes():
            events = peer_events(peers, change)
            if events is None:  # OwnLeaseLost
                log.warning("%s Shutting down daemon.", change.reason)
                stop.set()
                return
            await node.program(events)

    tasks = [asyncio.create_task(follow()), asyncio.create_task(registry.keep_lease())]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await registry.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flanneld-emu", description=__doc__.split("\n\n")[0])
    p.add_argument("--etcd-endpoints", required=True)
    p.add_argument("--etcd-prefix", default=DEFAULT_PREFIX)
    p.add_argument("--etcd-keyfile")
    p.add_argument("--etcd-certfile")
    p.add_argument("--etcd-cafile")
    p.add_argument("--etcd-api", choices=("auto", "v3", "v2"), default="auto")
    p.add_argument("--iface", required=True)
    p.add_argument("--subnet-file", type=Path, required=True)
    p.add_argument("--tx-checksum-off", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
