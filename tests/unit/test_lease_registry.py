"""Subnet keys, lease JSON and the static registry file."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest

from vxlan.config import ConfigError
from vxlan.lease import Lease, lease_from_attrs, make_subnet_key, parse_subnet_key
from vxlan.registry.file import load_registry, parse_registry

LEASE = {"PublicIP": "192.168.64.3", "PublicIPv6": None, "BackendType": "vxlan",
         "BackendData": {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}}
DOC = {"config": {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}},
       "subnets": {"10.5.34.0-24": LEASE,
                   "10.5.35.0-24": {"PublicIP": "192.168.64.4", "BackendType": "vxlan",
                                    "BackendData": {"VtepMAC": "8e:b1:87:76:66:7d"}}}}


def test_subnet_keys():
    assert parse_subnet_key("10.5.34.0-24") == ipaddress.IPv4Network("10.5.34.0/24")
    assert parse_subnet_key("10.5.34.0-24&fc00:0:0:22::-64") == ipaddress.IPv4Network("10.5.34.0/24")
    assert parse_subnet_key("config") is None
    assert make_subnet_key(ipaddress.IPv4Network("10.5.34.0/24")) == "10.5.34.0-24"


def test_lease_json_roundtrip_is_flanneld_bytes():
    """Documentation/reservations.md's example, byte for byte."""
    text = ('{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
            '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}')
    lease = lease_from_attrs(ipaddress.IPv4Network("10.5.34.0/24"), json.loads(text), "x")
    assert lease.to_json() == text


def test_old_and_other_backend_leases():
    attrs = {"PublicIP": "1.2.3.4", "BackendType": "vxlan", "BackendData": {"VtepMAC": "02:00:00:00:00:01"}}
    old = lease_from_attrs(ipaddress.IPv4Network("10.5.1.0/24"), attrs, "x")
    assert old.vni is None and old.vtep_mac == bytes.fromhex("020000000001")
    udp = lease_from_attrs(ipaddress.IPv4Network("10.5.1.0/24"), {"PublicIP": "1.2.3.4", "PublicIPv6": None}, "x")
    assert udp.backend_type == "" and udp.vtep_mac is None


def test_registry_parses():
    snap = parse_registry(DOC)
    assert len(snap.leases) == 2
    assert snap.leases[ipaddress.IPv4Network("10.5.35.0/24")].vni is None


def _broken(path, value):
    doc = copy.deepcopy(DOC)
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize("doc,field,text", [
    ([], "(top level)", "object"),
    (_broken(["config"], KeyError), "config", "missing"),
    (_broken(["config", "Network"], "10.5.0.0/33"), "config.Network", "correct Network"),
    (_broken(["subnets"], KeyError), "subnets", "missing"),
    (_broken(["subnets", "bogus"], LEASE), 'subnets["bogus"]', "not a subnet key"),
    (_broken(["subnets", "10.6.1.0-24"], LEASE), 'subnets["10.6.1.0-24"]', "not inside Network"),
    (_broken(["subnets", "10.5.34.0-24", "PublicIP"], "1.2.3"), 'subnets["10.5.34.0-24"].PublicIP', "not an IPv4"),
    (_broken(["subnets", "10.5.34.0-24", "BackendData", "VtepMAC"], "zz:zz"),
     'subnets["10.5.34.0-24"].BackendData.VtepMAC', "not a MAC"),
    (_broken(["subnets", "10.5.34.0-24", "BackendData"], KeyError), 'subnets["10.5.34.0-24"].BackendData', "VtepMAC"),
    (_broken(["subnets", "10.5.35.0-24", "PublicIP"], "192.168.64.3"), 'subnets["10.5.35.0-24"].PublicIP',
     "one lease per node"),
    (_broken(["subnets", "10.5.34.0-25"], LEASE), 'subnets["10.5.34.0-25"]', "overlaps"),
])
def test_registry_errors(doc, field, text):
    with pytest.raises(ConfigError) as info:
        parse_registry(doc)
    assert info.value.field == field
    assert text in info.value.reason


def test_load_registry_file_errors(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(ConfigError, match="cannot read"):
        load_registry(path)
    path.write_text("{\n  \"config\": ,\n}")
    with pytest.raises(ConfigError, match="not JSON: .* line 2 column"):
        load_registry(path)
    path.write_text(json.dumps(_broken(["subnets", "10.5.34.0-24", "PublicIP"], 5)))
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    assert str(path) in str(info.value) and 'subnets["10.5.34.0-24"].PublicIP' in str(info.value)


def test_lease_key_property():
    lease = Lease(ipaddress.IPv4Network("10.5.1.0/24"), "1.2.3.4", "vxlan", b"\x02" * 6, 1)
    assert lease.key == "10.5.1.0-24"
