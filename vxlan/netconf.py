"""Host network facts and programming through netlink (pyroute2's sync API).

Every function here blocks; the daemon calls them with ``asyncio.to_thread`` because
pyroute2's async API does not work under uvloop (its sockets expect the stock loop).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vxlan.rtnl import IPRoute, NetlinkError


class NetconfError(RuntimeError):
    pass


@dataclass(frozen=True)
class Iface:
    name: str
    index: int
    address: str  # first IPv4 address
    mtu: int


def _ipv4_addresses(ipr: IPRoute, index: int) -> list[str]:
    return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2, index=index)]


def iface_addresses(index: int, ipv6: bool = False) -> list[str] | None:
    """The IPv4 (or IPv6) addresses on interface ``index`` now; None if the interface is gone."""
    with IPRoute() as ipr:
        try:
            ipr.get_links(index)
        except NetlinkError:
            return None
        if ipv6:
            return [str(ipaddress.IPv6Address(a.get_attr("IFA_ADDRESS")))
                    for a in ipr.get_addr(family=socket.AF_INET6, index=index)]
        return _ipv4_addresses(ipr, index)


IFA_F_DEPRECATED, IFA_F_TENTATIVE = 0x20, 0x40


def iface_ipv6(index: int) -> str | None:
    """The interface's first global IPv6 address that is neither deprecated nor tentative, as
    flannel's GetInterfaceIP6Addrs picks (it would also take a link-local one, which no peer
    could send to without knowing our link: not here); None without one."""
    with IPRoute() as ipr:
        for a in ipr.get_addr(family=socket.AF_INET6, index=index):
            flags = a.get_attr("IFA_FLAGS") or a["flags"]
            if a["scope"] == 0 and not flags & (IFA_F_DEPRECATED | IFA_F_TENTATIVE):  # RT_SCOPE_UNIVERSE
                return str(ipaddress.IPv6Address(a.get_attr("IFA_ADDRESS")))
    return None


def _iface_of(ipr: IPRoute, index: int, public_ip: str | None, preferred: str | None = None,
              need_ipv4: bool = True) -> Iface:
    link = ipr.get_links(index)[0]
    name = link.get_attr("IFLA_IFNAME")
    addrs = _ipv4_addresses(ipr, index)
    if public_ip is None and not addrs and need_ipv4:
        raise NetconfError(f"interface {name} has no IPv4 address; give --public-ip or --iface")
    address = preferred if preferred in addrs else (addrs[0] if addrs else "")
    return Iface(name=name, index=index, address=address, mtu=link.get_attr("IFLA_MTU"))


def _lookup(ipr: IPRoute, spec: str) -> tuple[int, str | None] | None:
    """An --iface value (a name or one of the host's IPv4 addresses) -> (index, that address)."""
    try:
        ipaddress.IPv4Address(spec)
    except ValueError:
        found = ipr.link_lookup(ifname=spec)
        return (found[0], None) if found else None
    for a in ipr.get_addr(family=2):
        if a.get_attr("IFA_ADDRESS") == spec:
            return a["index"], spec
    return None


def find_iface(ifaces: tuple[str, ...] | str | None = (), public_ip: str | None = None,
               regexes: tuple[str, ...] = (), can_reach: str | None = None, ipv6_only: bool = False) -> Iface:
    """The underlay interface, chosen as flanneld's ``main.go`` and ``pkg/ipmatch/match.go:LookupExtIface``
    do: the first ``--iface`` (name or address) that exists; else the first ``--iface-regex``
    that matches an address, then a name; else the interface of the route to
    ``--iface-can-reach``; with none of them given, the interface of the first IPv4 default route
    (``ipv6_only``, an IPv6-only overlay: of the first IPv6 default route, and the interface
    needs no IPv4 address)."""
    if isinstance(ifaces, str):
        ifaces = (ifaces,)
    ifaces = tuple(ifaces or ())
    with IPRoute() as ipr:
        # main.go: each --iface, then each --iface-regex, then --iface-can-reach; the first hit wins
        for spec in ifaces:
            hit = _lookup(ipr, spec)
            if hit is not None:
                return _iface_of(ipr, hit[0], public_ip, hit[1], not ipv6_only)
        for pattern in regexes:
            rx = re.compile(pattern)
            for a in ipr.get_addr(family=2):
                address = a.get_attr("IFA_ADDRESS")
                if rx.search(address):
                    return _iface_of(ipr, a["index"], public_ip, address)
            for link in ipr.get_links():
                if rx.search(link.get_attr("IFLA_IFNAME")) and (ipv6_only or _ipv4_addresses(ipr, link["index"])):
                    return _iface_of(ipr, link["index"], public_ip, need_ipv4=not ipv6_only)
        if can_reach:
            try:
                route = ipr.route("get", dst=can_reach)[0]
                return _iface_of(ipr, route.get_attr("RTA_OIF"), public_ip, route.get_attr("RTA_PREFSRC"),
                                 not ipv6_only)
            except NetlinkError:
                pass
        if ifaces or regexes or can_reach:
            tried = ([f"--iface {','.join(ifaces)}"] if ifaces else []) + \
                ([f"--iface-regex {','.join(regexes)}"] if regexes else []) + \
                ([f"--iface-can-reach {can_reach}"] if can_reach else [])
            # flanneld's words (main.go), then what was tried
            raise NetconfError("Failed to find interface to use that matches the interfaces and/or regexes "
                               f"provided ({'; '.join(tried)})")
        family = socket.AF_INET6 if ipv6_only else socket.AF_INET
        for route in ipr.get_default_routes(family=family):
            index = route.get_attr("RTA_OIF")
            if index is not None:
                return _iface_of(ipr, index, public_ip, need_ipv4=not ipv6_only)
        raise NetconfError(f"no --iface given and no {'IPv6' if ipv6_only else 'IPv4'} default route to pick one from")


def is_directly_connected(ip: str) -> bool:
    """flannel's ``pkg/ip/iface.go:DirectRouting``: the kernel's route to ``ip`` has no gateway,
    i.e. ``ip`` is on a subnet this host is attached to."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=ip, family=socket.AF_INET6 if ":" in ip else socket.AF_INET)
        except NetlinkError:
            return False
        return len(routes) == 1 and routes[0].get_attr("RTA_GATEWAY") is None


def replace_route(dst, gateway: str, oif: int | None = None) -> None:
    """``ip route replace DST via GW [dev OIF]``: a host-gw or direct-routing peer (IPv4, or
    with DirectRouting a dual-stack peer's IPv6 subnet via its PublicIPv6)."""
    with IPRoute() as ipr:
        try:
            kwargs = {"dst": str(dst), "gateway": gateway, "family": _family(dst)}
            if oif is not None:
                kwargs["oif"] = oif
            ipr.route("replace", **kwargs)
        except NetlinkError as exc:
            raise NetconfError(f"route {dst} via {gateway}: {exc}") from None


def _family(network) -> int:
    return socket.AF_INET6 if network.version == 6 else socket.AF_INET


def delete_route(dst, gateway: str) -> None:
    with IPRoute() as ipr:
        try:
            ipr.route("del", dst=str(dst), gateway=gateway, family=_family(dst))
        except NetlinkError:
            pass  # already gone


def routes_via(gateways: set[str]) -> set[tuple[str, str]]:
    """(dst CIDR, gateway) of the main table's routes (IPv4 and IPv6) through any of ``gateways``."""
    out = set()
    with IPRoute() as ipr:
        for family, default in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            if not any((":" in gw) == (family == socket.AF_INET6) for gw in gateways):
                continue
            for route in ipr.get_routes(family=family, table=254):
                gw = route.get_attr("RTA_GATEWAY")
                if gw in gateways:
                    out.add((f"{route.get_attr('RTA_DST') or default}/{route['dst_len']}", gw))
    return out


def gateway_routes(network: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Network, str]:
    """Main-table routes with a gateway to a subnet inside ``network``: dst -> gateway.

    At a TUN backend's start, these are what a host-gw or DirectRouting run left for peers:
    more specific than the Network route to the TUN, they would win for a peer reached through
    the tunnel. flanneld's vxlan backend overwrites them with its own ``route replace`` per peer
    (vxlan_network.go); a TUN backend deletes them as those peers arrive (``delete_route``)."""
    found = {}
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, table=254):
            gw, dst = route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_DST")
            if gw is None or dst is None:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{route['dst_len']}")
            if net != network and net.subnet_of(network):
                found[net] = gw
    return found


def add_blackhole(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """flanneld --ip-blackhole-route: packets for unassigned addresses of our subnet are dropped
    here instead of following the Network route back into the tunnel. A high metric keeps the
    pod bridge's connected route for the same subnet in front."""
    with IPRoute() as ipr:
        try:
            ipr.route("replace", dst=str(subnet), type="blackhole", priority=BLACKHOLE_METRIC, family=_family(subnet))
        except NetlinkError as exc:
            raise NetconfError(f"blackhole route {subnet}: {exc}") from None


def delete_blackhole(subnet: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    with IPRoute() as ipr:
        try:
            ipr.route("del", dst=str(subnet), type="blackhole", priority=BLACKHOLE_METRIC, family=_family(subnet))
        except NetlinkError:
            pass


BLACKHOLE_METRIC = 4096


def ip_forward_enabled(ipv6: bool = False) -> bool:
    """net.ipv4.ip_forward (or net.ipv6.conf.all.forwarding) is on."""
    path = "/proc/sys/net/ipv6/conf/all/forwarding" if ipv6 else "/proc/sys/net/ipv4/ip_forward"
    try:
        return Path(path).read_text().strip() == "1"
    except OSError:
        return False


def disable_ipv6(name: str) -> None:
    """No IPv6 on device ``name``: no link-local address, no router or multicast-listener
    solicitations sent into it."""
    try:
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
    except OSError:
        pass  # IPv6 not compiled in: nothing to silence


def configure_tun(name: str, address: ipaddress.IPv4Address | None, mtu: int,
                  network: ipaddress.IPv4Network | None) -> None:
    """MTU, ``address/32`` and link up, then one route for the whole Network via the device
    (an IPv6-only node's, ``address`` None: MTU and up only).

    The /32 address is flannel's (vxlan.go:configureDeviceIPv4IPv6): host-originated traffic to
    remote pods uses it as source. IPv6 is switched off on the device so the kernel sends no
    router or multicast-listener solicitations into the tunnel (flannel sets accept_ra=0).
    """
    disable_ipv6(name)
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetconfError(f"TUN {name} vanished before it could be configured")
        index = found[0]
        try:
            ipr.link("set", index=index, mtu=mtu)
            if address is not None:
                ipr.addr("replace", index=index, address=str(address), prefixlen=32)
            ipr.link("set", index=index, state="up")
            if network is not None:
                ipr.route("replace", dst=str(network), oif=index)
        except NetlinkError as exc:
            raise NetconfError(f"configuring {name} (mtu {mtu}, {address}/32, route {network}): {exc}") from None


def configure_tun6(name: str, address: ipaddress.IPv6Address, network: ipaddress.IPv6Network, route_mtu: int) -> None:
    """The IPv6 side of the TUN for a dual-stack node: IPv6 on (no link-local address, no router
    solicitations: addr_gen_mode none, accept_ra 0), ``address/128`` as flannel-v6.<VNI> gets
    (configureDeviceIPv4IPv6), and one route for the IPv6Network via the device with
    ``route_mtu``: what a kernel flannel-v6 device over the IPv6 underlay has as its MTU (the
    underlay's minus 70), so that an oversize IPv6 packet gets its Packet Too Big here."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetconfError(f"TUN {name} vanished before it could be configured")
        index = found[0]
        # (the kernel still sends two multicast-listener reports, to ff02::16, into it as IPv6
        # comes on: no peer routes them, two no_route drops at start, as a kernel flannel-v6
        # device drops them for want of an fdb entry; IFF_MULTICAST off does not stop them)
        for key, value in (("addr_gen_mode", "1"), ("accept_ra", "0"), ("disable_ipv6", "0")):
            try:
                Path(f"/proc/sys/net/ipv6/conf/{name}/{key}").write_text(value)
            except OSError as exc:
                raise NetconfError(f"switching IPv6 on for {name} ({key}): {exc.strerror}") from None
        try:
            ipr.addr("replace", index=index, address=str(address), prefixlen=128, flags=0x02)  # IFA_F_NODAD
            ipr.route("replace", dst=str(network), oif=index, family=socket.AF_INET6, metrics={"RTAX_MTU": route_mtu})
        except NetlinkError as exc:
            raise NetconfError(f"configuring {name} ({address}/128, route {network} mtu {route_mtu}): {exc}") from None


def remove_route(name: str, network: ipaddress.IPv4Network) -> None:
    """Delete the Network route if it is still there (closing the TUN removes it anyway)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return
        try:
            ipr.route("del", dst=str(network), oif=found[0])
        except NetlinkError:
            pass


def kernel_vxlan_missing() -> str | None:
    """Why this kernel cannot make vxlan devices, or None if it can: tried in a scratch network
    namespace, so nothing appears on the host and nothing is left behind."""
    ns = f"vxl-{os.getpid()}-vxprobe"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"cannot probe for kernel vxlan (no ip command or no namespaces: {exc})"
    try:
        proc = subprocess.run(["ip", "-n", ns, "link", "add", "vxprobe", "type", "vxlan", "id", "1", "dstport",
                               "8472"], capture_output=True, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    if proc.returncode != 0:
        return f"the kernel cannot create vxlan devices: {proc.stderr.strip()}"
    return None
