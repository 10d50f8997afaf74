"""A small flanneld emulator for the lab: a kernel vxlan node driven from etcd as flanneld drives it.

It takes a lease with the same registry code as vxland (flanneld's acquisition rule), creates
``flannel.<VNI>`` the way ``pkg/backend/vxlan/device.go`` does (random locally administered
MAC, ``nolearning``, ``local <PublicIP> dev <iface>``, MTU - 50, ``S.0/32``), and for each
remote vxlan lease programs, in flannel's order (``vxlan_network.go:handleSubnetEvents``,
flannel-spec §3.2): a permanent neighbour ``S.0 -> VtepMAC``, an fdb entry
``VtepMAC -> PublicIP``, then the route ``S via S.0 dev flannel.<VNI> onlink``. Removal undoes
the three. It exists so tests and the demo have a kernel peer that learns from etcd; it is no
replacement for flanneld (no iptables, no health port).

    python -m vxlan.flanneld_emu --etcd-endpoints http://198.18.0.250:2379 --iface eth0 \\
        --subnet-file /tmp/h3.env [--tx-checksum-off]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

# The emulator runs ip/bridge subprocesses while gRPC threads run: gRPC's fork handlers only
# log noise about that. Set before grpc is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import uvloop  # noqa: E402

from vxlan import netconf, subnetenv, wire  # noqa: E402
from vxlan.peers import PeerAdded, PeerEvent, PeerRemoved, PeerTable  # noqa: E402
from vxlan.registry import Deleted, OwnLeaseLost, Put, Reset  # noqa: E402
from vxlan.registry.etcd import DEFAULT_PREFIX, EtcdRegistry  # noqa: E402
from vxlan.registry.etcd_client import EtcdClient, TLSFiles, parse_endpoints  # noqa: E402

log = logging.getLogger("flanneld-emu")


async def sh(*cmd: str, check: bool = True) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {err.decode().strip()}")


class KernelNode:
    def __init__(self, dev: str) -> None:
        self.dev = dev

    async def program(self, events: list[PeerEvent]) -> None:
        for event in events:
            lease = event.lease
            gw, mac = str(lease.subnet.network_address), wire.mac_to_str(lease.vtep_mac or b"")
            if isinstance(event, PeerAdded):
                await sh("ip", "neigh", "replace", gw, "lladdr", mac, "dev", self.dev, "nud", "permanent")
                await sh("bridge", "fdb", "replace", mac, "dev", self.dev, "dst", lease.public_ip, "self",
                         "permanent")
                await sh("ip", "route", "replace", str(lease.subnet), "via", gw, "dev", self.dev, "onlink")
                log.info("programmed %s via %s (%s)", lease.subnet, lease.public_ip, mac)
            elif isinstance(event, PeerRemoved):  # errors ignored, as flannel does
                await sh("ip", "route", "del", str(lease.subnet), "via", gw, "dev", self.dev, "onlink", check=False)
                await sh("bridge", "fdb", "del", mac, "dev", self.dev, "dst", lease.public_ip, "self", check=False)
                await sh("ip", "neigh", "del", gw, "dev", self.dev, check=False)
                log.info("removed %s via %s", lease.subnet, lease.public_ip)


class HostGwNode:
    """flannel's host-gw backend (route_network.go): ``S via P dev IFACE`` per peer."""

    def __init__(self, iface: str) -> None:
        self.iface = iface

    async def program(self, events: list[PeerEvent]) -> None:
        for event in events:
            lease = event.lease
            if isinstance(event, PeerAdded):
                await sh("ip", "route", "replace", str(lease.subnet), "via", lease.public_ip, "dev", self.iface)
                log.info("route %s via %s", lease.subnet, lease.public_ip)
            elif isinstance(event, PeerRemoved):
                await sh("ip", "route", "del", str(lease.subnet), "via", lease.public_ip, check=False)


async def run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tls = TLSFiles(args.etcd_keyfile, args.etcd_certfile, args.etcd_cafile) if args.etcd_keyfile else None
    registry = EtcdRegistry(EtcdClient(parse_endpoints(args.etcd_endpoints), tls=tls), prefix=args.etcd_prefix,
                            previous_subnet=subnetenv.previous_subnet(args.subnet_file))
    config = await registry.get_config()
    iface = await asyncio.to_thread(netconf.find_iface, args.iface, None)
    own, others = await registry.acquire(config, iface.address, wire.random_vtep_mac())
    mtu = config.tun_mtu(iface.mtu)
    if config.backend.type == "host-gw":
        node: KernelNode | HostGwNode = HostGwNode(iface.name)
        peers = PeerTable(own.subnet, config.subnet_len, "host-gw")
        await node.program(peers.reset(others))
        subnetenv.write(args.subnet_file, config.network, own.subnet, mtu)
        log.info("flanneld-emu started: backend host-gw, subnet %s, VtepMAC none, %d peers", own.subnet, len(peers))
        return await follow_until_stopped(registry, node, peers, stop)
    assert own.vtep_mac is not None
    vni, port = config.backend.vni, config.backend.port
    dev = f"flannel.{vni}"
    await sh("ip", "link", "add", dev, "address", wire.mac_to_str(own.vtep_mac), "type", "vxlan", "id", str(vni),
             "local", iface.address, "dev", iface.name, "dstport", str(port), "nolearning")
    await sh("ip", "link", "set", dev, "mtu", str(mtu))
    await sh("ip", "addr", "add", f"{own.subnet.network_address}/32", "dev", dev)
    await sh("ip", "link", "set", dev, "up")
    if args.tx_checksum_off:  # veth has no checksum hardware (see README, troubleshooting)
        await sh("ethtool", "-K", dev, "tx", "off")
    node = KernelNode(dev)
    peers = PeerTable(own.subnet, config.subnet_len)
    await node.program(peers.reset(others))
    subnetenv.write(args.subnet_file, config.network, own.subnet, mtu)
    log.info("flanneld-emu started: subnet %s, VtepMAC %s, VNI %d, port %d, %d peers",
             own.subnet, wire.mac_to_str(own.vtep_mac), vni, port, len(peers))
    return await follow_until_stopped(registry, node, peers, stop)


async def follow_until_stopped(registry, node, peers: PeerTable, stop: asyncio.Event) -> int:
    async def follow() -> None:
        async for change in registry.changes():
            if isinstance(change, Reset):
                await node.program(peers.reset(change.leases))
            elif isinstance(change, Put):
                await node.program(peers.update(change.lease))
            elif isinstance(change, Deleted):
                await node.program(peers.remove(change.subnet))
            elif isinstance(change, OwnLeaseLost):
                log.warning("%s Shutting down daemon.", change.reason)
                stop.set()
                return

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
    p.add_argument("--iface", required=True)
    p.add_argument("--subnet-file", type=Path, required=True)
    p.add_argument("--tx-checksum-off", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
