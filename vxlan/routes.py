"""Routes to peers reached without the tunnel: every peer with host-gw, and with vxlan
``DirectRouting`` the peers whose PublicIP is on a directly connected subnet.

``ip route replace S via P [dev IFACE]`` per peer as flannel's ``route_network.go`` /
``vxlan_network.go``; ``check()`` re-adds any that went missing, as
host-gw's ``routeCheck`` does every 10 s. Blocking (netlink): call from a thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from vxlan import netconf

log = logging.getLogger("vxland.routes")
CHECK_INTERVAL_S = 10.0  # route_network.go: routeCheck period


class PeerRoutes:
    def __init__(self, oif: int | None = None) -> None:
        self.oif = oif  # host-gw names the interface; DirectRouting lets the kernel pick it
        self.want: dict[ipaddress.IPv4Network, str] = {}

    def __contains__(self, subnet: ipaddress.IPv4Network) -> bool:
        return subnet in self.want

    def add(self, subnet: ipaddress.IPv4Network, gateway: str) -> None:
        netconf.replace_route(subnet, gateway, self.oif)
        self.want[subnet] = gateway

    def remove(self, subnet: ipaddress.IPv4Network) -> None:
        gateway = self.want.pop(subnet, None)
        if gateway is not None:
            netconf.delete_route(subnet, gateway)

    def check(self) -> int:
        """Re-add routes that someone deleted; returns how many."""
        if not self.want:
            return 0
        present = netconf.routes_via(set(self.want.values()))
        fixed = 0
        for subnet, gateway in list(self.want.items()):
            if (str(subnet), gateway) not in present:
                log.warning("route %s via %s was missing; re-adding it", subnet, gateway)
                try:
                    netconf.replace_route(subnet, gateway, self.oif)
                    fixed += 1
                except netconf.NetconfError as exc:
                    log.error("%s", exc)
        return fixed


async def check_forever(routes: PeerRoutes) -> None:
    """routeCheck's loop: ``routes.check()`` every CHECK_INTERVAL_S, off the event loop."""
    while True:
        await asyncio.sleep(CHECK_INTERVAL_S)
        await asyncio.to_thread(routes.check)
