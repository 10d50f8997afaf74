"""Host network facts and programming through netlink (pyroute2's sync API).

Every function here blocks; the daemon calls them with ``asyncio.to_thread`` because
pyroute2's async API does not work under uvloop (reference/dependencies.md).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError


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


def find_iface(iface: str | None, public_ip: str | None) -> Iface:
    """The underlay interface: ``--iface`` (a name or one of its IPv4 addresses), else the
    interface of the first IPv4 default route, as flanneld's LookupExtIface picks it."""
    with IPRoute() as ipr:
        links = {link["index"]: link for link in ipr.get_links()}
        index = None
        if iface:
            try:
                ipaddress.IPv4Address(iface)
                for a in ipr.get_addr(family=2):
                    if a.get_attr("IFA_ADDRESS") == iface:
                        index = a["index"]
                        break
                if index is None:
                    raise NetconfError(f"--iface {iface}: no interface has that address")
            except ValueError:
                found = ipr.link_lookup(ifname=iface)
                if not found:
                    raise NetconfError(f"--iface {iface}: no such interface") from None
                index = found[0]
        else:
            for route in ipr.get_default_routes(family=2):
                index = route.get_attr("RTA_OIF")
                if index is not None:
                    break
            if index is None:
                raise NetconfError("no --iface given and no IPv4 default route to pick one from")
        link = links[index]
        name = link.get_attr("IFLA_IFNAME")
        addrs = _ipv4_addresses(ipr, index)
        if public_ip is None and not addrs:
            raise NetconfError(f"interface {name} has no IPv4 address; give --public-ip or --iface")
        address = iface if iface in addrs else (addrs[0] if addrs else "")
        return Iface(name=name, index=index, address=address, mtu=link.get_attr("IFLA_MTU"))


def configure_tun(name: str, address: ipaddress.IPv4Address, mtu: int, network: ipaddress.IPv4Network) -> None:
    """MTU, ``address/32`` and link up, then one route for the whole Network via the device.

    The /32 address is flannel's (vxlan.go:configureDeviceIPv4IPv6): host-originated traffic to
    remote pods uses it as source. IPv6 is switched off on the device so the kernel sends no
    router or multicast-listener solicitations into the tunnel (flannel sets accept_ra=0).
    """
    try:
        Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6").write_text("1")
    except OSError:
        pass  # IPv6 not compiled in: nothing to silence
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise NetconfError(f"TUN {name} vanished before it could be configured")
        index = found[0]
        try:
            ipr.link("set", index=index, mtu=mtu)
            ipr.addr("replace", index=index, address=str(address), prefixlen=32)
            ipr.link("set", index=index, state="up")
            ipr.route("replace", dst=str(network), oif=index)
        except NetlinkError as exc:
            raise NetconfError(f"configuring {name} (mtu {mtu}, {address}/32, route {network}): {exc}") from None


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
