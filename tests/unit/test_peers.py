"""PeerTable: lease events to peer changes, as flannel's LeaseWatcher."""

from __future__ import annotations

import ipaddress

from vxlan.lease import Lease
from vxlan.peers import PeerAdded, PeerRemoved, PeerSkipped, PeerTable

OWN = ipaddress.IPv4Network("10.5.1.0/24")


def lease(n, ip=None, mac=b"\x02\x00\x00\x00\x00\x01", backend="vxlan", plen=24):
    return Lease(ipaddress.IPv4Network(f"10.5.{n}.0/{plen}"), ip or f"198.18.0.{n}", backend,
                 mac if backend == "vxlan" else None, 1)


def test_reset_reports_only_differences():
    table = PeerTable(OWN, 24)
    events = table.reset([lease(1), lease(2), lease(3)])
    assert events == [PeerAdded(lease(2)), PeerAdded(lease(3))]  # our own subnet is no peer
    changed = lease(3, mac=b"\x02\x00\x00\x00\x00\x09")
    events = table.reset([lease(1), lease(2), changed, lease(4)])
    assert events == [PeerAdded(changed), PeerAdded(lease(4))]
    assert table.reset([lease(4)]) == [PeerRemoved(lease(2)), PeerRemoved(changed)]
    assert len(table) == 1


def test_renewal_with_same_attrs_is_silent():
    table = PeerTable(OWN, 24)
    table.update(lease(2))
    assert table.update(lease(2)) == []


def test_other_backends_and_lengths_are_skipped():
    table = PeerTable(OWN, 24)
    assert isinstance(table.update(lease(3, backend="host-gw"))[0], PeerSkipped)
    assert isinstance(table.update(lease(8, plen=25))[0], PeerSkipped)
    assert len(table) == 0


def test_a_peer_whose_lease_changes_backend_stays_programmed():
    """route_network.go / vxlan_network.go ignore such an event: the old programming stays
    (a rolling backend switch keeps the peer reachable); a later delete removes it."""
    table = PeerTable(OWN, 24)
    table.update(lease(2))
    events = table.update(lease(2, backend="host-gw"))
    assert len(events) == 1 and isinstance(events[0], PeerSkipped) and "stays programmed" in events[0].reason
    assert table.peers() == [lease(2)]
    assert table.remove(lease(2).subnet) == [PeerRemoved(lease(2))]


def test_lookup():
    table = PeerTable(OWN, 24)
    table.update(lease(2))
    assert table.lookup(ipaddress.IPv4Address("10.5.2.77")) == lease(2)
    assert table.lookup(ipaddress.IPv4Address("10.5.9.1")) is None
    assert table.remove(ipaddress.IPv4Network("10.5.2.0/24")) == [PeerRemoved(lease(2))]
    assert table.remove(ipaddress.IPv4Network("10.5.2.0/24")) == []
