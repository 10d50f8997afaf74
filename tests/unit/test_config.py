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


# -- EnableIPv6: flannel's checks and texts (pkg/subnet/config.go at v0.28.9) -------------------

V6 = {"Network": "10.5.0.0/16", "Backend": VXLAN, "EnableIPv6": True}


@pytest.mark.parametrize("network, subnet_len, first, last", [
    ("fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),        # /62 or larger: /64 subnets
    ("fd78:0:0:1f::/64", 66, "fd78:0:0:1f:4000::", "fd78:0:0:1f:c000::"),  # else prefix + 2
    ("2001:db8::/124", 126, "2001:db8::4", "2001:db8::c"),
])
def test_ipv6_defaults_as_flannel(network, subnet_len, first, last):
    got = parse_config({**V6, "IPv6Network": network}).ipv6
    assert got is not None
    assert (str(got.network), got.subnet_len, str(got.subnet_min), str(got.subnet_max)) == \
        (network, subnet_len, first, last)


@pytest.mark.parametrize("extra, field, text", [
    ({}, "IPv6Network", "please define a correct IPv6Network parameter in the flannel config"),
    ({"IPv6Network": "10.9.0.0/16"}, "IPv6Network", "please define a correct IPv6Network parameter"),
    ({"IPv6Network": "fc00::/125"}, "IPv6Network", "IPv6Network is too small. Minimum useful network prefix is /124"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": 127}, "IPv6SubnetLen", "SubnetLen must be less than /127"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetLen": 49}, "IPv6SubnetLen",
     "network must be able to accommodate at least four subnets"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMin": "fd00::"}, "IPv6SubnetMin",
     "IPv6SubnetMin is not in the range of the IPv6Network"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMax": "fc00:0:0:5::1"}, "IPv6SubnetMax",
     "IPv6SubnetMax is not on a SubnetLen boundary: fc00:0:0:5::1"),
    ({"IPv6Network": "fc00::/48", "IPv6SubnetMin": 5}, "IPv6SubnetMin", "5 is not an IPv6 address"),
])
def test_ipv6_config_errors_name_the_field_with_flannels_text(extra, field, text):
    with pytest.raises(ConfigError) as err:
        parse_config({**V6, **extra})
    assert err.value.field == field and text in str(err.value)


def test_a_valid_ipv6_config_runs_on_the_vxlan_backend_only():
    from vxlan.config import check_supported

    cfg = parse_config({**V6, "IPv6Network": "fc00::/48"})
    assert cfg.ipv6 is not None and cfg.ipv6.contains_subnet(ipaddress.IPv6Network("fc00:0:0:7::/64"))
    assert not cfg.ipv6.contains_subnet(ipaddress.IPv6Network("fc00::/64"))  # the first subnet is not handed out
    check_supported(cfg)
    with pytest.raises(ConfigError) as err:
        check_supported(parse_config({**V6, "IPv6Network": "fc00::/48", "Backend": {"Type": "host-gw"}}))
    assert err.value.field == "EnableIPv6" and "vxlan backend only, not by host-gw" in str(err.value)
    check_supported(parse_config({"Network": "10.5.0.0/16"}))


def test_ipv4_keys_are_checked_before_the_ipv6_ones():
    with pytest.raises(ConfigError) as err:
        parse_config({**V6, "Network": "10.5.0.0/29"})
    assert err.value.field == "Network"
