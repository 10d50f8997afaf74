"""IPv6-only networks (EnableIPv4 false): the config, the lease every node writes (key
``0.0.0.0-0&<IPv6 subnet>``, PublicIP 0.0.0.0, BackendV6Data alone), allocation, peers,
subnet.env and the host rules, as flannel v0.28.9 has them (pkg/subnet/config.go,
pkg/subnet/subnet.go, pkg/backend/vxlan/vxlan.go:newSubnetAttrs, main.go)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random

import pytest

from vxlan import nftables, subnetenv
from vxlan.allocator import choose_subnet, own_lease
from vxlan.config import NO_IPV4_NETWORK, ConfigError, check_supported, parse_config
from vxlan.lease import Lease, LeaseV6, lease_from_value, parse_subnet_keys
from vxlan.peers import PeerAdded, PeerRemoved, PeerTable
from vxlan.registry import AcquireError, Deleted, Put, peer_events
from vxlan.registry.file import FileRegistry, parse_registry

V4, V6 = ipaddress.IPv4Network, ipaddress.IPv6Network
MAC6 = bytes.fromhex("2a0b0c0d0e0f")
ONLY6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd78::/48", "Backend": {"Type": "vxlan"}}


def only6(subnet6: str, public_ipv6: str, mac6: bytes = MAC6) -> Lease:
    return Lease(NO_IPV4_NETWORK, "0.0.0.0", "vxlan", v6=LeaseV6(V6(subnet6), public_ipv6, mac6, 1))


def test_the_config_has_no_ipv4_half():
    config = parse_config(ONLY6)
    assert not config.ipv4 and config.network == NO_IPV4_NETWORK and config.subnet_len == 0
    assert config.ipv6 is not None and config.ipv6.subnet_len == 64
    # the IPv4 keys are not looked at (CheckNetworkConfig checks them only with EnableIPv4)
    assert not parse_config({**ONLY6, "Network": "10.0.0.0/30"}).ipv4
    check_supported(config)


@pytest.mark.parametrize("raw, field, text", [
    ({"EnableIPv4": False, "Backend": {"Type": "vxlan"}}, "EnableIPv4", "none defined stack"),
    ({**ONLY6, "EnableIPv4": "no"}, "EnableIPv4", 'must be true or false, got "no"'),
    ({**ONLY6, "IPv6Network": None}, "IPv6Network", ""),
])
def test_bad_ipv6_only_configs_name_the_field(raw, field, text):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert err.value.field == field and text in err.value.reason


def test_only_the_vxlan_backend_carries_it():
    with pytest.raises(ConfigError) as err:
        check_supported(parse_config({**ONLY6, "Backend": {"Type": "host-gw"}}))
    assert err.value.field == "EnableIPv4" and "vxlan backend only, not by host-gw" in err.value.reason


def test_the_lease_flanneld_writes():
    config = parse_config(ONLY6)
    decision = choose_subnet(config, [], "0.0.0.0", None, random.Random(1), public_ipv6="fd00::9")
    lease = own_lease(config, decision, "0.0.0.0", b"\x02" * 6, ("fd00::9", MAC6))
    assert lease.subnet == NO_IPV4_NETWORK and config.ipv6.contains_subnet(lease.v6.subnet)
    assert lease.key == f"0.0.0.0-0&{lease.v6.subnet.network_address}-64"
    assert parse_subnet_keys(lease.key) == (NO_IPV4_NETWORK, lease.v6.subnet)
    # newSubnetAttrs: no IPv4 device, so PublicIP is the zero IP4 and BackendData is left out
    assert json.loads(lease.to_json()) == {"PublicIP": "0.0.0.0", "PublicIPv6": "fd00::9", "BackendType": "vxlan",
                                           "BackendV6Data": {"VNI": 1, "VtepMAC": "2a:0b:0c:0d:0e:0f"}}
    assert lease_from_value(NO_IPV4_NETWORK, lease.to_json().encode(), "k", lease.v6.subnet) == lease


def test_each_node_reuses_its_own_lease_by_its_public_ipv6():
    """Every IPv6-only lease has PublicIP 0.0.0.0: matching by it (as flanneld's etcd manager
    does) would give the second node the first one's lease."""
    config = parse_config(ONLY6)
    first = only6("fd78:0:0:1::/64", "fd00::1")
    decision = choose_subnet(config, [first], "0.0.0.0", None, random.Random(1), public_ipv6="fd00::2")
    assert decision.reuse is None and decision.subnet6 != first.v6.subnet and decision.subnet == NO_IPV4_NETWORK
    again = choose_subnet(config, [first], "0.0.0.0", None, random.Random(1), public_ipv6="fd00::1")
    assert again.reuse == first and again.subnet6 == first.v6.subnet
    # a dual-stack lease of ours no longer fits: deleted first
    old = Lease(V4("10.79.5.0/24"), "198.18.0.1", "vxlan", b"\x02" * 6, 1,
                v6=LeaseV6(V6("fd78:0:0:5::/64"), "fd00::1", MAC6, 1))
    decision = choose_subnet(config, [old], "0.0.0.0", None, random.Random(1), public_ipv6="fd00::1")
    assert decision.delete_first == [old] and decision.subnet == NO_IPV4_NETWORK


def test_the_previous_ipv6_subnet_is_taken_back():
    config = parse_config(ONLY6)
    prev6 = V6("fd78:0:0:77::/64")
    decision = choose_subnet(config, [], "0.0.0.0", None, random.Random(1), prev6, "fd00::1")
    assert (decision.subnet, decision.subnet6) == (NO_IPV4_NETWORK, prev6)
    taken = only6("fd78:0:0:77::/64", "fd00::2")
    assert choose_subnet(config, [taken], "0.0.0.0", None, random.Random(1), prev6, "fd00::1").subnet6 != prev6


def test_peers_are_told_apart_by_their_ipv6_subnets():
    table = PeerTable(NO_IPV4_NETWORK, 0, own_subnet6=V6("fd78:0:0:9::/64"))
    a, b = only6("fd78:0:0:1::/64", "fd00::1"), only6("fd78:0:0:2::/64", "fd00::2")
    assert peer_events(table, Put(a)) == [PeerAdded(a)]
    assert peer_events(table, Put(b)) == [PeerAdded(b)]
    assert table.update(only6("fd78:0:0:9::/64", "fd00::9")) == []  # our own
    assert peer_events(table, Deleted(NO_IPV4_NETWORK, V6("fd78:0:0:1::/64"))) == [PeerRemoved(a)]
    assert table.peers() == [b]


def test_subnet_env_has_the_ipv6_pair_alone():
    # WriteSubnetFile writes FLANNEL_NETWORK and FLANNEL_SUBNET only with EnableIPv4
    text = subnetenv.render(None, None, 1450, False, (V6("fd78::/48"), V6("fd78:0:0:1f::/64")))
    assert text == ("FLANNEL_IPV6_NETWORK=fd78::/48\nFLANNEL_IPV6_SUBNET=fd78:0:0:1f::1/64\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")


def test_nftables_rules_for_ipv6_alone_both_tables_made():
    ipv6 = (V6("fd78::/48"), V6("fd78:0:0:1f::/64"))
    text = nftables.script(None, None, True, True, False, ipv6)
    assert "add table ip flannel-ipv4" in text and "add table ip6 flannel-ipv6" in text
    assert "add chain ip flannel-ipv4" not in text and "add chain ip6 flannel-ipv6 postrtg" in text
    only = nftables.expected_rules(None, None, True, True, False, ipv6)
    both = nftables.expected_rules(V4("10.79.0.0/16"), V4("10.79.1.0/24"), True, True, False, ipv6)
    assert only and len(only) < len(both) and both[len(both) - len(only):] == only  # the IPv6 half
    assert not any("ip saddr" in rule or "ip daddr" in rule for rule in only)


def test_the_registry_file():
    """Keys 0.0.0.0-0&<IPv6 subnet>, one lease per PublicIPv6; a node takes the lease with its
    PublicIPv6 (all have PublicIP 0.0.0.0)."""
    a, b = only6("fd78:0:0:1::/64", "fd00::1"), only6("fd78:0:0:2::/64", "fd00::2")
    doc = {"config": ONLY6, "subnets": {a.key: json.loads(a.to_json()), b.key: json.loads(b.to_json())}}
    snap = parse_registry(doc)
    assert list(snap.leases.values()) == [a, b] and snap.lease(NO_IPV4_NETWORK, V6("fd78:0:0:2::/64")) == b
    for key, field, text in (
            ("10.5.1.0-24&fd78:0:0:3::-64", 'subnets["10.5.1.0-24&fd78:0:0:3::-64"]', "0.0.0.0-0&<IPv6 subnet>"),
            ("0.0.0.0-0&fd78:0:0:1:8000::-65", 'subnets["0.0.0.0-0&fd78:0:0:1:8000::-65"]', "overlaps"),
            ("0.0.0.0-0&fd78:0:0:3::-64", 'subnets["0.0.0.0-0&fd78:0:0:3::-64"].PublicIPv6', "one lease per node")):
        with pytest.raises(ConfigError) as err:
            parse_registry({**doc, "subnets": {**doc["subnets"], key: json.loads(a.to_json())}})
        assert err.value.field == field and text in err.value.reason, (err.value.field, err.value.reason)


def test_a_node_takes_its_lease_from_the_registry_file_by_its_public_ipv6(tmp_path):
    a, b = only6("fd78:0:0:1::/64", "fd00::1"), only6("fd78:0:0:2::/64", "fd00::2")
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"config": ONLY6, "subnets": {a.key: json.loads(a.to_json()),
                                                             b.key: json.loads(b.to_json())}}))
    registry = FileRegistry(path)
    config = asyncio.run(registry.get_config())
    own, others = asyncio.run(registry.acquire(config, "0.0.0.0", b"\x02" * 6, ("fd00::2", MAC6)))
    assert own == b and others == [a]
    registry = FileRegistry(path)
    config = asyncio.run(registry.get_config())
    with pytest.raises(AcquireError, match="no lease in .* has PublicIPv6 fd00::9: .* --public-ipv6"):
        asyncio.run(registry.acquire(config, "0.0.0.0", b"\x02" * 6, ("fd00::9", MAC6)))
