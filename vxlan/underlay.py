"""The underlay address a node binds and announces can be taken away under it (DHCP, an
operator, a cloud agent). flanneld never notices and goes on announcing a dead address; vxland
says so and exits 1 so that its service manager starts it again, which finds the interface's
new address. With etcd, a lease naming the dead address is released first: the restart then
takes the same subnet again (the previous one, from subnet.env; see allocator.choose_subnet)
and the peers learn the new address from its lease."""

from __future__ import annotations

import asyncio
import logging

from vxlan import netconf
from vxlan.lease import Lease

log = logging.getLogger("vxland")

CHECK_S = 2.0  # how often the address is looked for on its interface


async def watch(iface: netconf.Iface, address: str, own: Lease | None, registry) -> None:
    """Return once ``address`` is no longer on ``iface`` (logged, our lease released if it
    names the address and is no reservation)."""
    while True:
        await asyncio.sleep(CHECK_S)
        present = await asyncio.to_thread(netconf.iface_addresses, iface.index)
        if present is not None and address in present:
            continue
        now = (f"interface {iface.name} is gone" if present is None
               else f"{iface.name} has {', '.join(present) or 'no IPv4 address'} now")
        log.error("the underlay address %s is gone (%s): peers cannot reach this node at it; exiting so that "
                  "vxland is started again with the new address", address, now)
        if own is not None and own.public_ip == address:
            try:
                if await asyncio.wait_for(registry.release(), 10.0):
                    log.info("our lease %s named %s: released, so that the restart takes the same subnet with "
                             "the new address", own.key, address)
            except Exception as exc:  # etcd down, say: best effort, the exit follows all the same
                log.warning("could not release our lease %s: %s", own.key, exc or type(exc).__name__)
        return
