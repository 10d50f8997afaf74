"""The commands that do flanneld's job on a host, for each backend. Pure: it says, it never runs.

One source for three users: ``vxlanctl plan`` (prints them, or runs them once), the lab's
flanneld emulator (a kernel node driven from etcd) and the lab's static kernel nodes. Each
command copies what flanneld programs through netlink:

- vxlan device (``pkg/backend/vxlan/device.go:newVXLANDevice``, flannel-io/flannel v0.17.0):
  ``flannel.<VNI>``, kind vxlan, ``id VNI local PublicIP dev IFACE dstport Port nolearning``,
  the lease's VtepMAC, MTU = underlay - 50, address ``S.0/32``, up;
- per remote vxlan lease, in ``vxlan_network.go:handleSubnetEvents`` order: permanent
  neighbour ``S.0 -> VtepMAC``, fdb ``VtepMAC -> PublicIP``, then the route ``S via S.0 onlink``;
  with ``DirectRouting`` and the peer on a connected subnet, ``S via PublicIP`` instead;
- with EnableIPv6, ``flannel-v6.<VNI>`` over the IPv6 underlay and each dual-stack peer's
  IPv6 half the same way (v0.28.9 vxlan.go, vxlan_network.go), and the ip6tables rules;
- host-gw (``pkg/backend/route_network.go``): ``S via PublicIP dev IFACE`` per peer;
- the iptables rules of ``vxlan.iptables`` (flanneld >= 0.22) and subnet.env
  (``pkg/subnet/subnet.go:WriteSubnetFile``).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vxlan import iptables, subnetenv, wire
from vxlan.config import NetworkConfig
from vxlan.lease import Lease


@dataclass(frozen=True)
class Step:
    what: str  # one line for a person
    cmd: list[str]
    stdin: str | None = None  # written to the command's standard input
    done_if: list[str] | None = None  # a command that succeeds when the step is already done

    def sh(self) -> str:
        line = shlex.join(self.cmd)
        if self.done_if is not None:
            line = f"{shlex.join(self.done_if)} >/dev/null 2>&1 || {line}"
        if self.stdin is None:
            return line
        return f"{line} <<'EOF'\n{self.stdin.rstrip()}\nEOF"


@dataclass
class Plan:
    backend: str
    subnet: str
    public_ip: str
    iface: str
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the steps cannot do, read before applying

    def render_sh(self) -> str:
        out = ["#!/bin/sh", f"# flannel backend {self.backend} for this host: subnet {self.subnet}, "
               f"public IP {self.public_ip}, underlay {self.iface}", "set -e"]
        out += [f"# NOTE: {note}" for note in self.notes]
        for step in self.steps:
            out += ["", f"# {step.what}", step.sh()]
        return "\n".join(out) + "\n"

    def render_json(self) -> str:
        doc = {"backend": self.backend, "subnet": self.subnet, "public_ip": self.public_ip, "iface": self.iface,
               "notes": self.notes, "steps": [asdict(s) for s in self.steps]}
        return json.dumps(doc, indent=1)


def device_name(vni: int) -> str:
    return f"flannel.{vni}"  # vxlan.go:createVXLANDevice


def vxlan_device(vni: int, port: int, mac: bytes, local_ip: str, iface: str, mtu: int,
                 subnet: ipaddress.IPv4Network) -> list[Step]:
    dev = device_name(vni)
    return [
        Step(f"the kernel vxlan device {dev} (VtepMAC from our lease)",
             ["ip", "link", "add", dev, "address", wire.mac_to_str(mac), "type", "vxlan", "id", str(vni), "local",
              local_ip, "dev", iface, "dstport", str(port), "nolearning"], done_if=["ip", "link", "show", dev]),
        Step(f"{dev} MTU: the underlay's minus 50", ["ip", "link", "set", dev, "mtu", str(mtu)]),
        Step(f"{dev} address: our subnet's first address as a /32",
             ["ip", "addr", "replace", f"{subnet.network_address}/32", "dev", dev]),
        Step(f"{dev} up", ["ip", "link", "set", dev, "up"]),
    ]


def device_name_v6(vni: int) -> str:
    return f"flannel-v6.{vni}"  # vxlan.go:createVXLANDevice


def vxlan_device_v6(vni: int, port: int, mac: bytes, local_ipv6: str, iface: str, mtu: int,
                    subnet6: ipaddress.IPv6Network) -> list[Step]:
    """flannel-v6.<VNI> (EnableIPv6): a second vxlan device over the IPv6 underlay. flanneld asks
    for the same MTU as flannel.<VNI> at creation; the kernel caps an IPv6-underlay device at the
    underlay's minus 70 (1430 on 1500) itself. Address: the IPv6 subnet's first address as a
    /128 (configureDeviceIPv4IPv6)."""
    dev = device_name_v6(vni)
    return [
        Step(f"the kernel vxlan device {dev} over the IPv6 underlay (VtepMAC from BackendV6Data)",
             ["ip", "link", "add", dev, "address", wire.mac_to_str(mac), "mtu", str(mtu), "type", "vxlan", "id",
              str(vni), "local", local_ipv6, "dev", iface, "dstport", str(port), "nolearning"],
             done_if=["ip", "link", "show", dev]),
        Step(f"{dev} address: our IPv6 subnet's first address as a /128",
             ["ip", "-6", "addr", "replace", f"{subnet6.network_address}/128", "dev", dev, "nodad"]),
        Step(f"{dev} up", ["ip", "link", "set", dev, "up"]),
    ]


def vxlan_peer_v6(dev: str, lease: Lease) -> list[Step]:
    """The IPv6 half of a dual-stack vxlan lease (vxlan_network.go: AddV6ARP, AddV6FDB, the
    onlink v6VxlanRoute); nothing when the lease has no BackendV6Data or PublicIPv6."""
    v6 = lease.v6
    if v6 is None or v6.vtep_mac is None or v6.public_ip is None:
        return []
    gw, mac = str(v6.subnet.network_address), wire.mac_to_str(v6.vtep_mac)
    return [
        Step(f"peer {v6.subnet}: {gw} has VtepMAC {mac}",
             ["ip", "-6", "neigh", "replace", gw, "lladdr", mac, "dev", dev, "nud", "permanent"]),
        Step(f"peer {v6.subnet}: frames for {mac} go to {v6.public_ip}",
             ["bridge", "fdb", "replace", mac, "dev", dev, "dst", v6.public_ip, "self", "permanent"]),
        Step(f"peer {v6.subnet}: route through the tunnel",
             ["ip", "-6", "route", "replace", str(v6.subnet), "via", gw, "dev", dev, "onlink"]),
    ]


def vxlan_peer_v6_removed(dev: str, lease: Lease) -> list[Step]:
    v6 = lease.v6
    if v6 is None or v6.vtep_mac is None or v6.public_ip is None:
        return []
    gw, mac = str(v6.subnet.network_address), wire.mac_to_str(v6.vtep_mac)
    return [Step(f"peer {v6.subnet} gone: route", ["ip", "-6", "route", "del", str(v6.subnet), "via", gw, "dev", dev,
                                                    "onlink"]),
            Step(f"peer {v6.subnet} gone: fdb", ["bridge", "fdb", "del", mac, "dev", dev, "dst", v6.public_ip, "self"]),
            Step(f"peer {v6.subnet} gone: neighbour", ["ip", "-6", "neigh", "del", gw, "dev", dev])]


def vxlan_peer(dev: str, lease: Lease) -> list[Step]:
    """A remote vxlan lease reached through the tunnel: neighbour, fdb, then the route."""
    gw, mac = str(lease.subnet.network_address), wire.mac_to_str(lease.vtep_mac or b"")
    return [
        Step(f"peer {lease.subnet}: {gw} has VtepMAC {mac}",
             ["ip", "neigh", "replace", gw, "lladdr", mac, "dev", dev, "nud", "permanent"]),
        Step(f"peer {lease.subnet}: frames for {mac} go to {lease.public_ip}",
             ["bridge", "fdb", "replace", mac, "dev", dev, "dst", lease.public_ip, "self", "permanent"]),
        Step(f"peer {lease.subnet}: route through the tunnel",
             ["ip", "route", "replace", str(lease.subnet), "via", gw, "dev", dev, "onlink"]),
    ]


def vxlan_peer_removed(dev: str, lease: Lease) -> list[Step]:
    gw, mac = str(lease.subnet.network_address), wire.mac_to_str(lease.vtep_mac or b"")
    return [Step(f"peer {lease.subnet} gone: route", ["ip", "route", "del", str(lease.subnet), "via", gw, "dev", dev,
                                                       "onlink"]),
            Step(f"peer {lease.subnet} gone: fdb", ["bridge", "fdb", "del", mac, "dev", dev, "dst", lease.public_ip,
                                                    "self"]),
            Step(f"peer {lease.subnet} gone: neighbour", ["ip", "neigh", "del", gw, "dev", dev])]


def direct_route(lease: Lease, iface: str | None = None) -> Step:
    """host-gw, or a DirectRouting peer on a connected subnet: plain routing to its PublicIP."""
    cmd = ["ip", "route", "replace", str(lease.subnet), "via", lease.public_ip]
    return Step(f"peer {lease.subnet}: routed to {lease.public_ip}, no tunnel", cmd + (["dev", iface] if iface else []))


def direct_route6(lease: Lease) -> Step:
    """DirectRouting of a dual-stack peer's IPv6 half: its IPv6 subnet via its PublicIPv6."""
    assert lease.v6 is not None and lease.v6.public_ip is not None
    return Step(f"peer {lease.v6.subnet}: routed to {lease.v6.public_ip}, no tunnel",
                ["ip", "-6", "route", "replace", str(lease.v6.subnet), "via", lease.v6.public_ip])


def direct_route_removed(lease: Lease) -> Step:
    return Step(f"peer {lease.subnet} gone: route", ["ip", "route", "del", str(lease.subnet), "via", lease.public_ip])


def iptables_steps(network, subnet, ip_masq: bool, forward_rules: bool, random_fully: bool = True) -> list[Step]:
    """The masquerade and forward rules with iptables, or with ip6tables for an IPv6Network."""
    binary = "ip6tables" if network.version == 6 else "iptables"
    rules = (iptables.masq_rules(network, subnet, random_fully) if ip_masq else []) + \
        (iptables.forward_rules(network) if forward_rules else [])
    steps = []
    for table, chain in sorted({(r.table, r.chain) for r in rules if r.chain in (iptables.POSTRTG, iptables.FWD)}):
        steps.append(Step(f"chain {chain} ({binary})", [binary, "-t", table, "-N", chain],
                          done_if=[binary, "-t", table, "-S", chain]))
    for rule in rules:
        steps.append(Step(f"{'masquerade' if rule.table == 'nat' else 'forward'} rule ({binary})",
                          [binary, "-t", rule.table, "-A", rule.chain, *rule.spec],
                          done_if=[binary, "-t", rule.table, "-C", rule.chain, *rule.spec]))
    return steps


def build(config: NetworkConfig, own: Lease, peers: list[Lease], iface: str, iface_mtu: int,
          direct: set, subnet_file: Path, ip_masq: bool = False,
          forward_rules: bool = True, kernel_vxlan: str | None = None) -> Plan:
    """The plan for this host. ``direct``: the peers' subnets (IPv4, and IPv6 of dual-stack
    ones) that DirectRouting reaches without the tunnel;
    ``kernel_vxlan``: why this kernel cannot make vxlan devices, None if it can."""
    backend = config.backend
    plan = Plan(backend.type, str(own.subnet), own.public_ip, iface)
    mtu = config.tun_mtu(iface_mtu)
    remote = [lease for lease in peers if lease.subnet != own.subnet]
    if backend.type == "vxlan":
        if kernel_vxlan:
            plan.notes.append(f"{kernel_vxlan}: these commands need the vxlan module; run vxland on this host instead")
        assert own.vtep_mac is not None, "a vxlan lease carries a VtepMAC"
        dev = device_name(backend.vni)
        plan.steps += vxlan_device(backend.vni, backend.port, own.vtep_mac, own.public_ip, iface, mtu, own.subnet)
        for lease in remote:
            if lease.backend_type != "vxlan":
                plan.notes.append(f"lease {lease.key} ({lease.public_ip}) has BackendType "
                                  f"{lease.backend_type or '(none)'}: ignored, as flannel's vxlan backend does")
            elif lease.subnet in direct:
                plan.steps.append(direct_route(lease))
            else:
                plan.steps += vxlan_peer(dev, lease)
        plan.steps += _ipv6_steps(config, own, remote, iface, mtu, direct)
    elif backend.type == "host-gw":
        for lease in remote:
            if lease.backend_type != "host-gw":
                plan.notes.append(f"lease {lease.key} ({lease.public_ip}) has BackendType "
                                  f"{lease.backend_type or '(none)'}: ignored, as flannel's host-gw backend does")
            else:
                plan.steps.append(direct_route(lease, iface))
    else:
        plan.notes.append("the udp backend moves every packet through a process (flanneld or vxland): no command "
                          "does that by hand; run vxland. Only the rules and subnet.env below apply")
    plan.steps += iptables_steps(config.network, own.subnet, ip_masq, forward_rules)
    ipv6 = (config.ipv6.network, own.v6.subnet) if config.ipv6 is not None and own.v6 is not None else None
    if ipv6 is not None:
        plan.steps += iptables_steps(*ipv6, ip_masq, forward_rules)
    plan.steps.append(Step(f"subnet.env for CNI ({subnet_file})", ["sh", "-c", 'mkdir -p "$(dirname "$1")" && '
                                                                   'cat > "$1"', "-", str(subnet_file)],
                           stdin=subnetenv.render(config.network, own.subnet, mtu, ip_masq, ipv6)))
    return plan


def _ipv6_steps(config: NetworkConfig, own: Lease, remote: list[Lease], iface: str, mtu: int,
                direct: set) -> list[Step]:
    """EnableIPv6: flannel-v6.<VNI> and each dual-stack peer's IPv6 half (vxlan.go,
    vxlan_network.go; a route via its PublicIPv6 where ``direct`` holds its IPv6 subnet);
    nothing without EnableIPv6 or without our lease's IPv6 VtepMAC."""
    v6 = own.v6
    if config.ipv6 is None or v6 is None or v6.vtep_mac is None or v6.public_ip is None:
        return []
    backend = config.backend
    steps = vxlan_device_v6(backend.vni, backend.port, v6.vtep_mac, v6.public_ip, iface, mtu, v6.subnet)
    for lease in remote:
        if lease.backend_type != "vxlan" or lease.v6 is None:
            continue
        if lease.v6.subnet in direct and lease.v6.public_ip is not None:
            steps.append(direct_route6(lease))
        else:
            steps += vxlan_peer_v6(device_name_v6(backend.vni), lease)
    return steps
