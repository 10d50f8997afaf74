"""Dual-stack leases (flannel >= 0.15, EnableIPv6): keys, JSON, allocation, peers, the registry
file and subnet.env, as flannel v0.28.9 writes and reads them (pkg/subnet/subnet.go,
pkg/lease/lease.go, pkg/subnet/etcd/local_manager.go, pkg/backend/vxlan/vxlan.go)."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest

from vxlan import subnetenv, wire
from vxlan.allocator import OutOfSubnets, choose_subnet, own_lease
from vxlan.config import ConfigError, parse_config
from vxlan.lease import Lease, LeaseV6, lease_from_value, make_subnet_key, parse_subnet_key, parse_subnet_keys
from vxlan.peers import PeerAdded, PeerRemoved, PeerTable
from vxlan.registry import Deleted, Put, peer_events
from vxlan.registry.file import parse_registry

V4, V6 = ipaddress.IPv4Network, ipaddress.IPv6Network
MAC, MAC6 = bytes.fromhex("c6d2326f8f44"), bytes.fromhex("2a0b0c0d0e0f")
DUAL = {"Network": "10.79.0.0/16", "Backend": {"Type": "vxlan"}, "EnableIPv6": True, "IPv6Network": "fd78::/48"}


def dual(subnet: str, subnet6: str, public_ip: str = "198.18.0.1", public_ipv6: str | None = "fd00::1") -> Lease:
    return Lease(V4(subnet), public_ip, "vxlan", MAC, 1, v6=LeaseV6(V6(subnet6), public_ipv6, MAC6, 1))


# -- keys -----------------------------------------------------------------------------------

def test_the_dual_stack_key_flanneld_writes():
    key = "10.79.31.0-24&fd78:0:0:1f::-64"  # seen from flanneld v0.28.9 (the issue)
    assert parse_subnet_keys(key) == (V4("10.79.31.0/24"), V6("fd78:0:0:1f::/64"))
    assert parse_subnet_key(key) == V4("10.79.31.0/24")  # the IPv4 half, as before
    assert make_subnet_key(V4("10.79.31.0/24"), V6("fd78:0:0:1f::/64")) == key
    assert dual("10.79.31.0/24", "fd78:0:0:1f::/64").key == key
    assert parse_subnet_keys("10.79.31.0-24") == (V4("10.79.31.0/24"), None)


@pytest.mark.parametrize("key", [
    "10.79.31.0-24&fd78:0:0:1f::-128",  # ParseUint(.., 7): /127 at most
    "10.79.31.0-24&fd78:0:0:1f::1-64",  # host bits: no subnet
    "10.79.31.0-24&fd78:::1f::-64",  # no address
    "10.79.31.0-24&FD78::-64",  # flannel's pattern takes lower case only: the whole key is then no match
])
def test_keys_that_are_no_dual_stack_subnet(key):
    assert parse_subnet_keys(key) is None or parse_subnet_keys(key)[1] is None
    if key.endswith("FD78::-64"):
        assert parse_subnet_keys(key) is None


# -- JSON -----------------------------------------------------------------------------------

def test_json_field_order_and_round_trip():
    lease = dual("10.79.31.0/24", "fd78:0:0:1f::/64")
    text = lease.to_json()
    assert text == ('{"PublicIP":"198.18.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan",'
                    '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},'
                    '"BackendV6Data":{"VNI":1,"VtepMAC":"2a:0b:0c:0d:0e:0f"}}')
    assert lease_from_value(V4("10.79.31.0/24"), text.encode(), "k", V6("fd78:0:0:1f::/64")) == lease


def test_a_dual_stack_key_without_ipv6_data_keeps_its_subnet():
    """A node with EnableIPv6 but no IPv6 address writes PublicIPv6 null and no BackendV6Data
    (newSubnetAttrs): the canonical IPv4 value, whose IPv6 subnet comes from the key."""
    value = b'{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,' \
            b'"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    lease = lease_from_value(V4("10.79.2.0/24"), value, "k", V6("fd78:0:0:2::/64"))
    assert lease.v6 == LeaseV6(V6("fd78:0:0:2::/64")) and lease.vtep_mac == MAC
    assert lease.key == "10.79.2.0-24&fd78:0:0:2::-64"
    assert lease.to_json() == value.decode()


def test_an_ipv6_only_value_has_no_backend_data():
    value = {"PublicIP": "0.0.0.0", "PublicIPv6": "fd00::3", "BackendType": "vxlan",
             "BackendV6Data": {"VNI": 1, "VtepMAC": "2a:0b:0c:0d:0e:0f"}}
    text = json.dumps(value, separators=(",", ":"))
    lease = lease_from_value(V4("0.0.0.0/0"), text.encode(), "k", V6("fd78:0:0:3::/64"))
    assert lease.vtep_mac is None and lease.v6 == LeaseV6(V6("fd78:0:0:3::/64"), "fd00::3", MAC6, 1)
    assert lease.to_json() == text
    assert lease.ident < 0 and lease.ident != dual("0.0.0.0/0", "fd78:0:0:4::/64").ident  # told apart by IPv6


@pytest.mark.parametrize("change, field, text", [
    ({"PublicIPv6": "fd00::zz"}, "PublicIPv6", '"fd00::zz" is not an IPv6 address'),
    ({"PublicIPv6": 7}, "PublicIPv6", "7 is not an IPv6 address"),
    ({"BackendV6Data": "x"}, "BackendV6Data", "must be an object"),
    ({"BackendV6Data": {"VtepMAC": "01:00:5e:00:00:01"}}, "BackendV6Data.VtepMAC", "multicast"),
    ({"BackendV6Data": {"VtepMAC": "2a:0b:0c:0d:0e:0f", "VNI": -1}}, "BackendV6Data.VNI", "is not a VNI"),
])
def test_bad_ipv6_parts_name_the_field(change, field, text):
    value = json.loads(dual("10.79.31.0/24", "fd78:0:0:1f::/64").to_json()) | change
    with pytest.raises(ConfigError) as err:
        lease_from_value(V4("10.79.31.0/24"), json.dumps(value).encode(), "k", V6("fd78:0:0:1f::/64"))
    assert err.value.field == f"k.{field}" and text in err.value.reason


# -- allocation (local_manager.go:tryAcquireLease, allocateSubnet) ---------------------------

def test_a_new_node_gets_an_ipv6_subnet_too_in_range_and_free():
    config = parse_config(DUAL)
    taken = [dual(f"10.79.{i}.0/24", f"fd78:0:0:{i:x}::/64", f"198.18.1.{i}") for i in range(1, 60)]
    seen6 = set()
    for seed in range(30):
        decision = choose_subnet(config, taken, "198.18.0.9", None, random.Random(seed))
        assert decision.reuse is None and decision.subnet6 is not None
        assert config.ipv6.contains_subnet(decision.subnet6)
        assert all(not decision.subnet6.overlaps(t.v6.subnet) for t in taken)
        seen6.add(decision.subnet6)
    assert len(seen6) > 5  # random among the first 100 free, independently of the IPv4 pick
    assert min(seen6) >= V6("fd78:0:0:3c::/64")


def test_reuse_needs_both_halves_to_fit():
    config = parse_config(DUAL)
    mine = dual("10.79.5.0/24", "fd78:0:0:5::/64", "198.18.0.9")
    assert choose_subnet(config, [mine], "198.18.0.9", None, random.Random(1)).reuse == mine
    # an IPv4-only lease of ours does not fit a dual-stack config: deleted, a new one taken
    old = Lease(V4("10.79.5.0/24"), "198.18.0.9", "vxlan", MAC, 1)
    decision = choose_subnet(config, [old], "198.18.0.9", None, random.Random(1))
    assert decision.reuse is None and decision.delete_first == [old] and decision.subnet6 is not None
    # ... nor does a dual-stack one fit an IPv4-only config
    v4only = parse_config({k: v for k, v in DUAL.items() if k not in ("EnableIPv6", "IPv6Network")})
    decision = choose_subnet(v4only, [mine], "198.18.0.9", None, random.Random(1))
    assert decision.delete_first == [mine] and decision.subnet6 is None


def test_previous_subnets_are_taken_back_together():
    config = parse_config(DUAL)
    prev, prev6 = V4("10.79.77.0/24"), V6("fd78:0:0:77::/64")
    decision = choose_subnet(config, [], "198.18.0.9", prev, random.Random(1), prev6)
    assert (decision.subnet, decision.subnet6) == (prev, prev6)
    # without the IPv6 one (a subnet.env of an IPv4-only run) the previous subnet does not fit
    decision = choose_subnet(config, [], "198.18.0.9", prev, random.Random(1))
    assert decision.subnet6 is not None and decision.subnet6 != prev6  # (0x77 is past the first 100 free)
    # taken by someone else meanwhile: a new pick
    other = dual("10.79.1.0/24", "fd78:0:0:77::/64", "198.18.1.1")
    assert choose_subnet(config, [other], "198.18.0.9", prev, random.Random(1), prev6).subnet6 != prev6


def test_out_of_ipv6_subnets():
    config = parse_config({**DUAL, "IPv6Network": "fd78::/124"})  # /126s: ::4, ::8 and ::c usable
    taken = [dual(f"10.79.{i}.0/24", f"fd78::{4 * i:x}/126", f"198.18.1.{i}") for i in (1, 2, 3)]
    with pytest.raises(OutOfSubnets):
        choose_subnet(config, taken, "198.18.0.9", None, random.Random(1))


def test_own_lease_keeps_both_vtep_macs_and_leaves_out_what_has_no_address():
    config = parse_config(DUAL)
    mine = dual("10.79.5.0/24", "fd78:0:0:5::/64", "198.18.0.9")
    decision = choose_subnet(config, [mine], "198.18.0.9", None, random.Random(1))
    again = own_lease(config, decision, "198.18.0.9", b"\x02" * 6, ("fd00::1", b"\x02" * 6))
    assert again == mine
    fresh = own_lease(config, choose_subnet(config, [], "198.18.0.9", None, random.Random(1)), "198.18.0.9",
                      b"\x02" * 6, (None, b"\x06" * 6))
    assert fresh.v6 is not None and fresh.v6.public_ip is None and fresh.v6.vtep_mac is None
    assert '"PublicIPv6":null' in fresh.to_json() and "BackendV6Data" not in fresh.to_json()


# -- peers ----------------------------------------------------------------------------------

def test_a_node_switching_to_dual_stack_stays_a_peer():
    """flannel deletes the IPv4-only lease, then writes the dual-stack one; should the deletion
    arrive late, it must not remove the peer that the new lease made."""
    table = PeerTable(V4("10.79.9.0/24"), 24, own_subnet6=V6("fd78:0:0:9::/64"))
    old = Lease(V4("10.79.5.0/24"), "198.18.0.5", "vxlan", MAC, 1)
    new = dual("10.79.5.0/24", "fd78:0:0:5::/64", "198.18.0.5")
    assert table.update(old) == [PeerAdded(old)]
    assert peer_events(table, Put(new)) == [PeerAdded(new)]
    assert peer_events(table, Deleted(V4("10.79.5.0/24"))) == []
    assert table.peers() == [new]
    assert peer_events(table, Deleted(V4("10.79.5.0/24"), V6("fd78:0:0:5::/64"))) == [PeerRemoved(new)]
    assert table.update(dual("10.79.9.0/24", "fd78:0:0:9::/64")) == []  # our own


# -- the registry file and subnet.env --------------------------------------------------------

def test_registry_file_with_dual_stack_keys():
    lease = dual("10.79.31.0/24", "fd78:0:0:1f::/64")
    snap = parse_registry({"config": DUAL, "subnets": {lease.key: json.loads(lease.to_json())}})
    assert list(snap.leases.values()) == [lease]
    with pytest.raises(ConfigError, match="is not inside IPv6Network fd78::/48"):
        parse_registry({"config": DUAL, "subnets": {"10.79.31.0-24&fd79::-64": json.loads(lease.to_json())}})
    other = dual("10.79.32.0/24", "fd78:0:0:1f::/64", "198.18.0.2")
    with pytest.raises(ConfigError, match="overlaps fd78:0:0:1f::/64") as err:
        parse_registry({"config": DUAL, "subnets": {lease.key: json.loads(lease.to_json()),
                                                    other.key: json.loads(other.to_json())}})
    assert err.value.field == 'subnets["10.79.32.0-24&fd78:0:0:1f::-64"]'


def test_subnet_env_as_write_subnet_file(tmp_path):
    text = subnetenv.render(V4("10.79.0.0/16"), V4("10.79.31.0/24"), 1450, True,
                            (V6("fd78::/48"), V6("fd78:0:0:1f::/64")))
    # WriteSubnetFile: the IPv4 pair, the IPv6 pair, then MTU and masquerade
    assert text == ("FLANNEL_NETWORK=10.79.0.0/16\nFLANNEL_SUBNET=10.79.31.1/24\n"
                    "FLANNEL_IPV6_NETWORK=fd78::/48\nFLANNEL_IPV6_SUBNET=fd78:0:0:1f::1/64\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    path = tmp_path / "subnet.env"
    subnetenv.write_text(path, text)
    assert subnetenv.previous_subnet6(path) == V6("fd78:0:0:1f::/64")
    assert subnetenv.previous_subnet(path) == V4("10.79.31.0/24")
    assert wire.mac_to_str(MAC6) == "2a:0b:0c:0d:0e:0f"
