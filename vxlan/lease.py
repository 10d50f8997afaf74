"""Subnet leases: keys like ``10.5.34.0-24`` and the lease JSON, exactly as flannel has them.

Key format: ``pkg/subnet/subnet.go:MakeSubnetKey`` / ``ParseSubnetKey``.
Value: ``pkg/lease/lease.go:LeaseAttrs`` marshalled in field order, e.g.
``{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",
"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}``. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
from typing import Any

from vxlan import wire
from vxlan.config import ConfigError, get_ci

# subnet.go:ParseSubnetKey (>= 0.17, anchored, with the optional dual-stack part).
_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")

# A vxlan lease exactly as flanneld >= 0.15 writes it (LeaseAttrs through Go's json.Marshal:
# compact, fixed field order). A /8 of leases parses 65,536 of them at start: this pattern
# takes the common case in one match instead of a JSON decode and a walk of the result;
# anything else (older or other forms, other backends, odd values) takes the full path, which
# gives the same lease for whatever both accept (tests/unit/test_lease_registry.py).
_CANONICAL_VXLAN = re.compile(
    rb'\{"PublicIP":"(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})","PublicIPv6":null,"BackendType":"vxlan",'
    rb'"BackendData":\{"VNI":(0|[1-9]\d{0,7}),"VtepMAC":"((?:[0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2})"\}\}')


def _network_from_int(address: int, prefix: int) -> ipaddress.IPv4Network:
    """``IPv4Network((address, prefix))`` for an address without host bits, built directly (3x
    faster): the attributes ``ipaddress`` itself sets. Checked against the public constructor
    at import; a Python whose ipaddress differs gets the public constructor."""
    net = object.__new__(ipaddress.IPv4Network)
    addr = object.__new__(ipaddress.IPv4Address)
    addr._ip = address
    net.network_address = addr
    net.netmask, net._prefixlen = ipaddress.IPv4Network._make_netmask(prefix)
    return net


def _public_network(address: int, prefix: int) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network((address, prefix))


try:
    _probe = _network_from_int(0x0A050100, 24)
    _same = vars(_probe) == vars(ipaddress.IPv4Network((0x0A050100, 24)))
    _same = _same and str(_probe) == "10.5.1.0/24" and _probe.broadcast_address == ipaddress.IPv4Address("10.5.1.255")
except (AttributeError, TypeError):
    _same = False
_network = _network_from_int if _same else _public_network


def parse_subnet_key(key: str) -> ipaddress.IPv4Network | None:
    """``"10.5.34.0-24"`` (or the dual-stack ``...&fc00::-64``) -> IPv4Network; None if it is not one."""
    match = _KEY_RE.search(key)
    if match is None:
        return None
    try:
        address, prefix = wire.ipv4_to_int(match.group(1)), int(match.group(2))
        if prefix > 32:
            return None
        return network(address, prefix)
    except ValueError:
        return None


def network(address: int, prefix: int) -> ipaddress.IPv4Network:
    """``IPv4Network((address, prefix))``, the fast way where it can be; ValueError for host bits."""
    if prefix >= 31 or address & ~(0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF:
        # /31 and /32 get a special hosts() from the constructor; host bits set: its ValueError
        return ipaddress.IPv4Network((address, prefix))
    return _network(address, prefix)


def subnet_key(subnet: ipaddress.IPv4Network) -> int:
    """A subnet as one int: network address << 6 | prefix length (orders as IPv4Network does
    for subnets of one length)."""
    return int(subnet.network_address) << 6 | subnet.prefixlen


def make_subnet_key(subnet: ipaddress.IPv4Network) -> str:
    return f"{subnet.network_address}-{subnet.prefixlen}"


class Lease:
    """One subnet lease: its subnet and flannel's LeaseAttrs. Immutable; equal and hashed by
    value, as a frozen dataclass.

    The subnet is held as one int (``subnet_key``: network address << 6 | prefix length): a
    /8 of leases is 65,536 of them, and an IPv4Network with its address object costs 224
    bytes where the int costs 32; ``subnet`` builds the IPv4Network when asked.
    """

    __slots__ = ("subnet_key", "public_ip", "backend_type", "vtep_mac", "vni")
    subnet_key: int
    public_ip: str
    backend_type: str
    vtep_mac: bytes | None  # vxlan only
    vni: int | None  # absent in leases of flannel <= 0.13

    def __init__(self, subnet: ipaddress.IPv4Network, public_ip: str, backend_type: str,
                 vtep_mac: bytes | None = None, vni: int | None = None) -> None:
        init = object.__setattr__
        init(self, "subnet_key", subnet_key(subnet))
        init(self, "public_ip", public_ip)
        init(self, "backend_type", backend_type)
        init(self, "vtep_mac", vtep_mac)
        init(self, "vni", vni)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Lease is immutable (cannot set {name})")

    def _fields(self) -> tuple:
        return (self.subnet_key, self.public_ip, self.backend_type, self.vtep_mac, self.vni)

    def __eq__(self, other: object) -> bool:
        return type(other) is Lease and self._fields() == other._fields()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (f"Lease(subnet={self.subnet!r}, public_ip={self.public_ip!r}, backend_type={self.backend_type!r}, "
                f"vtep_mac={self.vtep_mac!r}, vni={self.vni!r})")

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return network(self.subnet_key >> 6, self.subnet_key & 63)

    @property
    def network_address(self) -> int:
        """The subnet's network address as an int (what the data plane's table is keyed by)."""
        return self.subnet_key >> 6

    @property
    def prefixlen(self) -> int:
        return self.subnet_key & 63

    @property
    def key(self) -> str:
        return f"{ipaddress.IPv4Address(self.subnet_key >> 6)}-{self.subnet_key & 63}"

    def to_json(self) -> str:
        """The value flanneld writes (field order of LeaseAttrs, compact like Go's Marshal)."""
        attrs: dict[str, Any] = {"PublicIP": self.public_ip, "PublicIPv6": None}
        if self.backend_type:
            attrs["BackendType"] = self.backend_type
        if self.backend_type == "vxlan" and self.vtep_mac is not None:
            attrs["BackendData"] = {"VNI": self.vni if self.vni is not None else 1,
                                    "VtepMAC": wire.mac_to_str(self.vtep_mac)}
        return json.dumps(attrs, separators=(",", ":"))


def lease_backend_type(config) -> str:
    """The BackendType our lease carries: flannel's udp backend writes none (udp_amd64.go)."""
    return "" if config.backend.type == "udp" else config.backend.type


def lease_from_value(subnet: ipaddress.IPv4Network, value: bytes, path: str) -> Lease:
    """Decode a lease value as etcd holds it (JSON bytes); ConfigError (a ValueError) names the
    field, and a value that is no JSON raises ValueError or UnicodeDecodeError, RecursionError
    if nested too deep."""
    match = _CANONICAL_VXLAN.fullmatch(value)
    if match is not None:
        public_ip, vni, mac_text = match.group(1).decode(), int(match.group(2)), match.group(3).decode()
        try:
            wire.ipv4_to_int(public_ip)
            mac = wire.mac_to_bytes(mac_text)
        except ValueError:
            mac = b"\x01"  # let the full path say what is wrong
        if not mac[0] & 1 and vni <= wire.MAX_VNI:
            return Lease(subnet=subnet, public_ip=public_ip, backend_type="vxlan", vtep_mac=mac, vni=vni)
    return lease_from_attrs(subnet, json.loads(value), path)


def lease_from_attrs(subnet: ipaddress.IPv4Network, attrs: Any, path: str) -> Lease:
    """Decode a lease value; ``path`` prefixes the field name in errors."""
    if not isinstance(attrs, dict):
        raise ConfigError(path, f"lease must be a JSON object, got {json.dumps(attrs)}")
    public_ip = get_ci(attrs, "PublicIP")
    try:
        if not isinstance(public_ip, str):  # an int would be an address to ipaddress
            raise ValueError
        # A copy, not the decoded document's string: a lease outlives the document, and the
        # strings it kept would pin the allocator's pages of the whole document (a /8 registry
        # file: 58 MB kept instead of 21).
        public_ip = socket.inet_ntoa(wire.ipv4_to_int(public_ip).to_bytes(4, "big"))
    except ValueError:
        raise ConfigError(f"{path}.PublicIP", f"{json.dumps(public_ip)} is not an IPv4 address") from None
    backend_type = get_ci(attrs, "BackendType", "")
    if not isinstance(backend_type, str):
        raise ConfigError(f"{path}.BackendType", f"must be a string, got {json.dumps(backend_type)}")
    backend_type = sys.intern(backend_type)  # one "vxlan" for all, not one per lease
    if backend_type != "vxlan":
        # Other backends' leases are kept (they hold subnets) but never become peers
        # (vxlan_network.go:handleSubnetEvents compares BackendType exactly).
        return Lease(subnet=subnet, public_ip=public_ip, backend_type=backend_type)
    data = get_ci(attrs, "BackendData")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}.BackendData", 'a vxlan lease needs {"VtepMAC": "..."}')
    mac_text = get_ci(data, "VtepMAC")
    if not isinstance(mac_text, str):
        raise ConfigError(f"{path}.BackendData.VtepMAC", f"missing or not a string: {json.dumps(mac_text)}")
    try:
        mac = wire.mac_to_bytes(mac_text)
    except ValueError as exc:
        raise ConfigError(f"{path}.BackendData.VtepMAC", str(exc)) from None
    if mac[0] & 1:
        raise ConfigError(f"{path}.BackendData.VtepMAC", f"{mac_text} is a multicast address, not a VTEP")
    vni = get_ci(data, "VNI")
    if vni is not None and (isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= wire.MAX_VNI):
        raise ConfigError(f"{path}.BackendData.VNI", f"{json.dumps(vni)} is not a VNI (0..{wire.MAX_VNI})")
    return Lease(subnet=subnet, public_ip=public_ip, backend_type="vxlan", vtep_mac=mac, vni=vni)
