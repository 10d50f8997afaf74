"""flannel network config: defaults and flannel's own validation texts (pkg/subnet/config.go)."""

from __future__ import annotations

import ipaddress

import pytest

from vxlan.config import ConfigError, parse_config

VXLAN = {"Type": "vxlan"}


def test_defaults_for_a_16():
    cfg = parse_config({"Network": "10.5.0.0/16", "Backend": VXLAN})
    assert cfg.subnet_len == 24
    assert str(cfg.subnet_min) == "10.5.1.0"  # the first subnet is skipped
    assert str(cfg.subnet_max) == "10.5.255.0"
    assert (cfg.backend.vni, cfg.backend.port, cfg.backend.mtu) == (1, 8472, 0)
    assert cfg.tun_mtu(1500) == 1450


def test_small_network_gets_prefix_plus_two():
    assert parse_config({"Network": "10.5.0.0/24", "Backend": VXLAN}).subnet_len == 26


def test_keys_are_case_insensitive_like_go():
    cfg = parse_config({"network": "10.5.0.0/16", "backend": {"type": "VXLAN", "vni": 42, "port": 4789, "MTU": 9000}})
    assert (cfg.backend.vni, cfg.backend.port) == (42, 4789)
    assert cfg.tun_mtu(1500) == 8950  # Backend.MTU wins over the interface's


def test_host_bits_are_masked():
    assert parse_config({"Network": "10.5.3.7/16", "Backend": VXLAN}).network == ipaddress.IPv4Network("10.5.0.0/16")


@pytest.mark.parametrize("raw,field,text", [
    ({"Backend": VXLAN}, "Network", "please define a correct Network parameter in the flannel config"),
    ({"Network": "banana", "Backend": VXLAN}, "Network", "please define a correct Network"),
    ({"Network": "10.0.0.0/29", "Backend": VXLAN}, "Network", "Minimum useful network prefix is /28"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 31, "Backend": VXLAN}, "SubnetLen", "SubnetLen must be less than /31"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 17, "Backend": VXLAN}, "SubnetLen", "at least four subnets"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0", "Backend": VXLAN}, "SubnetMin",
     "SubnetMin is not in the range of the Network"),
    ({"Network": "10.0.0.0/16", "SubnetMax": "10.0.3.1", "Backend": VXLAN}, "SubnetMax",
     "SubnetMax is not on a SubnetLen boundary: 10.0.3.1"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "ipip"}}, "Backend.Type", "unknown backend type: ipip"),
    ({"Network": "10.0.0.0/16", "Backend": {}}, "Backend.Type", "unknown backend type: "),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": "1"}}, "Backend.VNI", "must be an integer"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1 << 24}}, "Backend.VNI", "out of range"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "Port": 70000}}, "Backend.Port", "out of range"),
    ({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan", "MTU": 100}}, "Backend.MTU", "68"),
])
def test_errors_name_field_and_reason(raw, field, text):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.field == field
    assert text in info.value.reason


def test_backend_types_and_their_mtus():
    """No Backend: udp on 8285, as flanneld's code (config.go:parseBackendType), MTU - 28;
    host-gw: the underlay MTU; vxlan: MTU - 50."""
    cfg = parse_config({"Network": "10.0.0.0/16"})
    assert (cfg.backend.type, cfg.backend.port, cfg.backend_missing, cfg.tun_mtu(1500)) == ("udp", 8285, True, 1472)
    cfg = parse_config({"Network": "10.0.0.0/16", "Backend": {"Type": "UDP", "Port": 7890}})
    assert (cfg.backend.type, cfg.backend.port, cfg.backend_missing) == ("udp", 7890, False)
    assert parse_config({"Network": "10.0.0.0/16", "Backend": {"Type": "host-gw"}}).tun_mtu(1500) == 1500
    assert parse_config({"Network": "10.0.0.0/16", "Backend": {"Type": "vxlan"}}).tun_mtu(1500) == 1450
