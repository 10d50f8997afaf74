"""flannel's network config (``<prefix>/config``): parse, defaults, validation, subnet math.

Follows ``pkg/subnet/config.go:ParseConfig`` / ``CheckNetworkConfig``: Go's
encoding/json matches keys case-insensitively and ignores unknown ones, so we do the same, and
the validation texts are flannel's own so operators can search for them. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from vxlan import wire


class ConfigError(ValueError):
    """A config or registry field is wrong. ``field`` is its path, ``reason`` what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def get_ci(obj: dict[str, Any], key: str, default: Any = None) -> Any:
    """Look a key up the way Go's encoding/json does: exact match first, then any case."""
    if key in obj:
        return obj[key]
    lower = key.lower()
    for k, v in obj.items():
        if k.lower() == lower:
            return v
    return default


DEFAULT_UDP_PORT = 8285  # pkg/backend/udp/udp_amd64.go defaultPort


@dataclass(frozen=True)
class BackendConfig:
    type: str  # "vxlan", "host-gw" or "udp"
    vni: int = 1  # pkg/backend/vxlan/vxlan.go const defaultVNI
    port: int = wire.DEFAULT_PORT  # 0 in the config = kernel default 8472
    mtu: int = 0  # 0 = external interface MTU (flannel >= 0.21.3 "MTU" option)
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False


@dataclass(frozen=True)
class IPv6Range:
    """The IPv6 half of a dual-stack config (EnableIPv6): IPv6Network, IPv6SubnetLen and the
    IPv6SubnetMin..IPv6SubnetMax range that subnets are picked from."""

    network: ipaddress.IPv6Network
    subnet_len: int
    subnet_min: ipaddress.IPv6Address
    subnet_max: ipaddress.IPv6Address

    def contains_subnet(self, subnet: ipaddress.IPv6Network) -> bool:
        """flannel's isIPv6SubnetConfigCompat (local_manager.go): IPv6SubnetMin <= IP <=
        IPv6SubnetMax and the same length."""
        return self.subnet_min <= subnet.network_address <= self.subnet_max and subnet.prefixlen == self.subnet_len


@dataclass(frozen=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend: BackendConfig
    backend_missing: bool = False  # no "Backend" key: flanneld's code falls back to udp
    enable_nftables: bool = False  # flannel >= 0.25: masquerade and forward rules with nftables (vxlan.nftables)
    ipv6: IPv6Range | None = None  # EnableIPv6: leases carry an IPv6 subnet too
    # EnableIPv4 (default true). False: an IPv6-only overlay; the IPv4 half of every lease is
    # 0.0.0.0/0 (flannel's empty IP4Net: keys "0.0.0.0-0&fd..::-64", MakeSubnetKey) and the
    # IPv4 fields above say so (Network 0.0.0.0/0, SubnetLen 0).
    ipv4: bool = True

    def subnet_mask(self) -> int:
        return (0xFFFFFFFF << (32 - self.subnet_len)) & 0xFFFFFFFF

    def contains_subnet(self, subnet: ipaddress.IPv4Network) -> bool:
        """flannel's isSubnetConfigCompat: SubnetMin <= IP <= SubnetMax and same length."""
        return (
            self.subnet_min <= subnet.network_address <= self.subnet_max
            and subnet.prefixlen == self.subnet_len
        )

    def tun_mtu(self, underlay_mtu: int) -> int:
        """MTU of the tunnel device: Backend.MTU or the underlay's, minus 50 (vxlan_network.go);
        host-gw adds no header, so its FLANNEL_MTU is the underlay's (route_network.go:MTU)."""
        if self.backend.type == "host-gw":
            return underlay_mtu
        if self.backend.type == "udp":  # udp_network_amd64.go: encapOverhead = 28
            return underlay_mtu - 28
        return (self.backend.mtu or underlay_mtu) - wire.ENCAP_OVERHEAD


def _int_field(obj: dict[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = get_ci(obj, key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}.{key}", f"must be an integer, got {json.dumps(value)}")
    if not lo <= value <= hi:
        raise ConfigError(f"{path}.{key}", f"{value} is out of range {lo}..{hi}")
    return value


def _bool_field(obj: dict[str, Any], key: str, path: str) -> bool:
    value = get_ci(obj, key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}.{key}", f"must be true or false, got {json.dumps(value)}")
    return value


def parse_backend(raw: Any, path: str = "Backend") -> BackendConfig:
    if raw is None:
        # config.go:parseBackendType defaults to "udp" when Backend is absent (the docs say
        # vxlan; the code says udp), so vxland runs flannel's udp backend too; the daemon logs it.
        return BackendConfig(type="udp", vni=0, port=DEFAULT_UDP_PORT)
    if not isinstance(raw, dict):
        raise ConfigError(path, f"error decoding Backend property of config: not an object: {json.dumps(raw)}")
    btype = get_ci(raw, "Type", "")
    if not isinstance(btype, str):
        raise ConfigError(f"{path}.Type", f"must be a string, got {json.dumps(btype)}")
    if btype.lower() == "udp":
        return BackendConfig(type="udp", vni=0, port=_int_field(raw, "Port", path, 0, 0, 65535) or DEFAULT_UDP_PORT)
    if btype.lower() == "host-gw":
        # hostgw.go: no options; routes only, so the MTU is the underlay's.
        return BackendConfig(type="host-gw", vni=0, port=0)
    if btype.lower() != "vxlan":
        # manager.go:GetBackend lower-cases the type; "" gives flannel's "unknown backend type: ".
        raise ConfigError(f"{path}.Type",
                          f'unknown backend type: {btype} (vxland provides "vxlan", "host-gw" and "udp")')
    port = _int_field(raw, "Port", path, 0, 0, 65535)
    mtu = _int_field(raw, "MTU", path, 0, 0, 65535)
    if mtu and mtu - wire.ENCAP_OVERHEAD < 68:
        raise ConfigError(f"{path}.MTU", f"{mtu} leaves less than the IPv4 minimum of 68 bytes inside the tunnel")
    return BackendConfig(
        type="vxlan",
        vni=_int_field(raw, "VNI", path, 1, 0, wire.MAX_VNI),
        port=port or wire.DEFAULT_PORT,
        mtu=mtu,
        gbp=_bool_field(raw, "GBP", path),
        learning=_bool_field(raw, "Learning", path),
        direct_routing=_bool_field(raw, "DirectRouting", path),
    )


def _network_field(raw: dict[str, Any], key: str, kind: type) -> Any:
    """The CIDR under ``key`` as ``kind`` (IPv4Network or IPv6Network), host bits masked as
    net.ParseCIDR does; flannel's text when it is missing or no CIDR of that family."""
    text = get_ci(raw, key)
    try:
        if not isinstance(text, str):
            raise ValueError
        return kind(text, strict=False)
    except ValueError:
        raise ConfigError(key, f"please define a correct {key} parameter in the flannel config") from None


def _top_bool(raw: dict[str, Any], key: str) -> bool:
    value = get_ci(raw, key, False)
    if not isinstance(value, bool):  # Go's json: "cannot unmarshal ... into ... of type bool"
        raise ConfigError(key, f"must be true or false, got {json.dumps(value)}")
    return value


def ipv6_range(raw: dict[str, Any]) -> IPv6Range:
    """flannel's CheckNetworkConfig for EnableIPv6 (pkg/subnet/config.go, v0.28.9): the
    IPv6Network, IPv6SubnetLen (64, or prefix + 2 above a /62) and IPv6SubnetMin/Max (the
    second and the second-to-last subnet), with flannel's error texts."""
    network = _network_field(raw, "IPv6Network", ipaddress.IPv6Network)
    subnet_len = get_ci(raw, "IPv6SubnetLen", 0)
    if isinstance(subnet_len, bool) or not isinstance(subnet_len, int) or subnet_len < 0:
        raise ConfigError("IPv6SubnetLen", f"must be an integer, got {json.dumps(subnet_len)}")
    if subnet_len:
        if subnet_len > 126:
            raise ConfigError("IPv6SubnetLen", "SubnetLen must be less than /127")
        if subnet_len < network.prefixlen + 2:
            raise ConfigError("IPv6SubnetLen", "network must be able to accommodate at least four subnets")
    elif network.prefixlen > 124:
        raise ConfigError("IPv6Network", "IPv6Network is too small. Minimum useful network prefix is /124")
    else:
        subnet_len = 64 if network.prefixlen <= 62 else network.prefixlen + 2
    step = 1 << (128 - subnet_len)
    bounds = []
    for key, default in (("IPv6SubnetMin", int(network.network_address) + step),
                         ("IPv6SubnetMax", int(network.network_address) + network.num_addresses - step)):
        value = get_ci(raw, key)
        try:
            if value is not None and not isinstance(value, str):
                raise ValueError
            address = ipaddress.IPv6Address(value) if value else None
        except ValueError:
            raise ConfigError(key, f"{json.dumps(value)} is not an IPv6 address") from None
        if address is None or not int(address):  # flannel: the zero value means unset
            address = ipaddress.IPv6Address(default)
        elif address not in network:
            raise ConfigError(key, f"{key} is not in the range of the IPv6Network")
        bounds.append(address)
    for key, address in zip(("IPv6SubnetMin", "IPv6SubnetMax"), bounds, strict=True):
        if int(address) % step:
            raise ConfigError(key, f"{key} is not on a SubnetLen boundary: {address}")
    return IPv6Range(network, subnet_len, bounds[0], bounds[1])


def _ip_field(obj: dict[str, Any], key: str) -> ipaddress.IPv4Address | None:
    value = get_ci(obj, key)
    if value is None or value == "0.0.0.0":  # flannel: zero value means unset
        return None
    try:
        if not isinstance(value, str):  # IPv4Address() would take an int
            raise ValueError
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(key, f"{json.dumps(value)} is not an IPv4 address") from None


def parse_config(raw: Any) -> NetworkConfig:
    """Validate a decoded config object; raises ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError("config", f"must be a JSON object, got {type(raw).__name__}")
    ipv4 = get_ci(raw, "EnableIPv4", True)
    ipv4 = True if ipv4 is None else ipv4  # JSON null leaves Go's default (SetDefaults: true)
    if not isinstance(ipv4, bool):
        raise ConfigError("EnableIPv4", f"must be true or false, got {json.dumps(ipv4)}")
    if ipv4:
        network = _network_field(raw, "Network", ipaddress.IPv4Network)
        subnet_len = _subnet_len(raw, network)
        subnet_min, subnet_max = _subnet_range(raw, network, subnet_len)
    else:
        # CheckNetworkConfig looks at none of the IPv4 keys without EnableIPv4 (config.go)
        network, subnet_len = NO_IPV4_NETWORK, 0
        subnet_min = subnet_max = NO_IPV4_NETWORK.network_address
    # checked after the IPv4 keys, in CheckNetworkConfig's order
    ipv6 = ipv6_range(raw) if _top_bool(raw, "EnableIPv6") else None
    if not ipv4 and ipv6 is None:
        # main.go: ipmatch.GetIPFamily(EnableIPv4, EnableIPv6) fails with "none defined stack"
        raise ConfigError("EnableIPv4", "EnableIPv4 and EnableIPv6 are both false: none defined stack")
    return NetworkConfig(
        ipv4=ipv4,
        network=network,
        subnet_len=subnet_len,
        subnet_min=subnet_min,
        subnet_max=subnet_max,
        backend=parse_backend(get_ci(raw, "Backend")),
        backend_missing=get_ci(raw, "Backend") is None,
        enable_nftables=_top_bool(raw, "EnableNFTables"),
        ipv6=ipv6,
    )


NO_IPV4_NETWORK = ipaddress.IPv4Network("0.0.0.0/0")  # an IPv6-only config's (and lease's) IPv4 half


def check_supported(config: NetworkConfig) -> None:
    """ConfigError (naming the field) for a valid config that vxland cannot run: the registries,
    the lease code and the lab read such configs (kernel nodes carry them); the daemon,
    ``vxlanctl doctor`` and ``vxlanctl plan`` ask this before running one. EnableIPv6 is carried
    by the vxlan backend only (a second VTEP over the IPv6 underlay), IPv6-only overlays too."""
    if not config.ipv4 and config.backend.type != "vxlan":
        raise ConfigError("EnableIPv4", f"IPv6-only overlays are carried by vxland's vxlan backend only, not by "
                                        f"{config.backend.type}")
    if config.ipv6 is not None and config.backend.type != "vxlan":
        raise ConfigError("EnableIPv6", f"IPv6 overlays are carried by vxland's vxlan backend only, not by "
                                        f"{config.backend.type}")


def _subnet_len(raw: dict, network: ipaddress.IPv4Network) -> int:
    """SubnetLen, or config.go's default: 24 when the Network is /22 or larger, else prefix + 2."""
    subnet_len = get_ci(raw, "SubnetLen", 0)
    if isinstance(subnet_len, bool) or not isinstance(subnet_len, int):
        raise ConfigError("SubnetLen", f"must be an integer, got {json.dumps(subnet_len)}")
    if subnet_len == 0:
        if network.prefixlen > 28:
            raise ConfigError("Network", "network is too small. Minimum useful network prefix is /28")
        subnet_len = 24 if network.prefixlen <= 22 else network.prefixlen + 2
    if subnet_len > 30:
        raise ConfigError("SubnetLen", "SubnetLen must be less than /31")
    if subnet_len < network.prefixlen + 2:
        raise ConfigError("SubnetLen", "network must be able to accommodate at least four subnets")
    return subnet_len


def _subnet_range(raw: dict, network: ipaddress.IPv4Network,
                  subnet_len: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
    """SubnetMin and SubnetMax, by default the Network less its first and last subnets."""
    step = 1 << (32 - subnet_len)
    net_int = int(network.network_address)
    subnet_min = _ip_field(raw, "SubnetMin") or ipaddress.IPv4Address(net_int + step)
    subnet_max = _ip_field(raw, "SubnetMax") or ipaddress.IPv4Address(int(network.broadcast_address) + 1 - step)
    for key, value in (("SubnetMin", subnet_min), ("SubnetMax", subnet_max)):
        if value not in network:
            raise ConfigError(key, f"{key} is not in the range of the Network")
        if int(value) % step:
            raise ConfigError(key, f"{key} is not on a SubnetLen boundary: {value}")
    return subnet_min, subnet_max
