"""Subnet leases: keys like ``10.5.34.0-24`` and the lease JSON, exactly as flannel has them.

Key format: ``pkg/subnet/subnet.go:MakeSubnetKey`` / ``ParseSubnetKey``; a dual-stack lease
(flannel >= 0.15, EnableIPv6) adds its IPv6 subnet: ``10.5.34.0-24&fc00:0:0:22::-64``.
Value: ``pkg/lease/lease.go:LeaseAttrs`` marshalled in field order, e.g.
``{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",
"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}``; a dual-stack one carries
``"PublicIPv6":"fd00::3"`` and ``"BackendV6Data":{"VNI":1,"VtepMAC":"..."}`` (the VtepMAC of the
node's ``flannel-v6.<VNI>`` device) after BackendData. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
from dataclasses import dataclass
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
    both = parse_subnet_keys(key)
    return None if both is None else both[0]


SubnetKeys = tuple[ipaddress.IPv4Network, "ipaddress.IPv6Network | None"]  # a key's IPv4 and IPv6 subnets


def parse_subnet_keys(key: str) -> SubnetKeys | None:
    """A lease key's IPv4 subnet and, for a dual-stack key, its IPv6 one; None if it is no
    subnet key. As ParseSubnetKey, but a subnet with host bits set is none either."""
    match = _KEY_RE.search(key)
    if match is None:
        return None
    try:
        address, prefix = wire.ipv4_to_int(match.group(1)), int(match.group(2))
        if prefix > 32:
            return None
        subnet4 = network(address, prefix)
        if match.group(3) is None:
            return subnet4, None
        # ParseUint(parts[4], 10, 7): at most 127
        prefix6 = int(match.group(4))
        return (subnet4, ipaddress.IPv6Network((match.group(3), prefix6))) if prefix6 < 128 else None
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


def make_subnet_key(subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None = None) -> str:
    """subnet.go:MakeSubnetKey; Python's IPv6 text is Go's (RFC 5952 compressed, lower case)."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    return key if subnet6 is None else f"{key}&{subnet6.network_address}-{subnet6.prefixlen}"


def subnet6_key(subnet6: ipaddress.IPv6Network) -> int:
    """An IPv6 subnet as one int: network address << 8 | prefix length."""
    return int(subnet6.network_address) << 8 | subnet6.prefixlen


def lease_ident(subnet: ipaddress.IPv4Network, subnet6: ipaddress.IPv6Network | None) -> int:
    """What tells leases apart (``Lease.ident``): the IPv4 subnet; for an IPv6-only lease
    (``0.0.0.0-0&...``) a negative int from its IPv6 subnet."""
    if subnet.prefixlen or subnet6 is None:
        return subnet_key(subnet)
    return -1 - subnet6_key(subnet6)


@dataclass(frozen=True, slots=True)
class LeaseV6:
    """The IPv6 half of a dual-stack lease: its subnet (from the key), PublicIPv6 and
    BackendV6Data (None where the lease has none)."""

    subnet: ipaddress.IPv6Network
    public_ip: str | None = None
    vtep_mac: bytes | None = None
    vni: int | None = None

    def to_attrs(self) -> dict[str, Any]:
        return vxlan_attrs(self.vni, self.vtep_mac or b"")


def vxlan_attrs(vni: int | None, vtep_mac: bytes) -> dict[str, Any]:
    """BackendData or BackendV6Data of a vxlan lease (vxlan.go:vxlanLeaseAttrs; VNI 1 where a
    flannel <= 0.13 lease had none)."""
    return {"VNI": vni if vni is not None else 1, "VtepMAC": wire.mac_to_str(vtep_mac)}


class Lease:
    """One subnet lease: its subnet and flannel's LeaseAttrs. Immutable; equal and hashed by
    value, as a frozen dataclass.

    The subnet is held as one int (``subnet_key``: network address << 6 | prefix length): a
    /8 of leases is 65,536 of them, and an IPv4Network with its address object costs 224
    bytes where the int costs 32; ``subnet`` builds the IPv4Network when asked.
    """

    __slots__ = ("subnet_key", "public_ip", "backend_type", "vtep_mac", "vni", "v6", "ident")
    subnet_key: int
    public_ip: str
    backend_type: str
    vtep_mac: bytes | None  # vxlan only
    vni: int | None  # absent in leases of flannel <= 0.13
    v6: LeaseV6 | None  # dual-stack leases only
    ident: int  # what tells this lease from others (lease_ident): the peer table's key

    def __init__(self, subnet: ipaddress.IPv4Network, public_ip: str, backend_type: str,
                 vtep_mac: bytes | None = None, vni: int | None = None, v6: LeaseV6 | None = None) -> None:
        init = object.__setattr__
        init(self, "subnet_key", subnet_key(subnet))
        init(self, "public_ip", public_ip)
        init(self, "backend_type", backend_type)
        init(self, "vtep_mac", vtep_mac)
        init(self, "vni", vni)
        init(self, "v6", v6)
        init(self, "ident", self.subnet_key if v6 is None else lease_ident(subnet, v6.subnet))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Lease is immutable (cannot set {name})")

    def _fields(self) -> tuple:
        return (self.subnet_key, self.public_ip, self.backend_type, self.vtep_mac, self.vni, self.v6)

    def __eq__(self, other: object) -> bool:
        return type(other) is Lease and self._fields() == other._fields()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        v6 = f", v6={self.v6!r}" if self.v6 is not None else ""
        return (f"Lease(subnet={self.subnet!r}, public_ip={self.public_ip!r}, backend_type={self.backend_type!r}, "
                f"vtep_mac={self.vtep_mac!r}, vni={self.vni!r}{v6})")

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
        key = f"{ipaddress.IPv4Address(self.subnet_key >> 6)}-{self.subnet_key & 63}"
        return key if self.v6 is None else f"{key}&{self.v6.subnet.network_address}-{self.v6.subnet.prefixlen}"

    def to_json(self) -> str:
        """The value flanneld writes (field order of LeaseAttrs, compact like Go's Marshal;
        BackendData and BackendV6Data left out when empty, as their omitempty says)."""
        attrs: dict[str, Any] = {"PublicIP": self.public_ip,
                                 "PublicIPv6": self.v6.public_ip if self.v6 is not None else None}
        if self.backend_type:
            attrs["BackendType"] = self.backend_type
        if self.backend_type == "vxlan" and self.vtep_mac is not None:
            attrs["BackendData"] = vxlan_attrs(self.vni, self.vtep_mac)
        if self.backend_type == "vxlan" and self.v6 is not None and self.v6.vtep_mac is not None:
            attrs["BackendV6Data"] = self.v6.to_attrs()
        return json.dumps(attrs, separators=(",", ":"))


def lease_backend_type(config) -> str:
    """The BackendType our lease carries: flannel's udp backend writes none (udp_amd64.go)."""
    return "" if config.backend.type == "udp" else config.backend.type


def lease_from_value(subnet: ipaddress.IPv4Network, value: bytes, path: str,
                     subnet6: ipaddress.IPv6Network | None = None) -> Lease:
    """Decode a lease value as etcd holds it (JSON bytes); ``subnet6`` is a dual-stack key's
    IPv6 subnet. ConfigError (a ValueError) names the field, and a value that is no JSON raises
    ValueError or UnicodeDecodeError, RecursionError if nested too deep."""
    match = _CANONICAL_VXLAN.fullmatch(value) if subnet6 is None else None
    if match is not None:
        public_ip, vni, mac_text = match.group(1).decode(), int(match.group(2)), match.group(3).decode()
        try:
            wire.ipv4_to_int(public_ip)
            mac = wire.mac_to_bytes(mac_text)
        except ValueError:
            mac = b"\x01"  # let the full path say what is wrong
        if not mac[0] & 1 and vni <= wire.MAX_VNI:
            return Lease(subnet=subnet, public_ip=public_ip, backend_type="vxlan", vtep_mac=mac, vni=vni)
    return lease_from_attrs(subnet, json.loads(value), path, subnet6)


def lease_from_attrs(subnet: ipaddress.IPv4Network, attrs: Any, path: str,
                     subnet6: ipaddress.IPv6Network | None = None) -> Lease:
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
    v6 = None if subnet6 is None else _v6_from_attrs(subnet6, attrs, path, backend_type == "vxlan")
    if backend_type != "vxlan":
        # Other backends' leases are kept (they hold subnets) but never become peers
        # (vxlan_network.go:handleSubnetEvents compares BackendType exactly).
        return Lease(subnet=subnet, public_ip=public_ip, backend_type=backend_type, v6=v6)
    data = get_ci(attrs, "BackendData")
    if data is None and v6 is not None and v6.vtep_mac is not None:
        # IPv6 only in the data: newSubnetAttrs (vxlan.go) leaves BackendData out without an
        # IPv4 device, and flanneld then programs nothing for the IPv4 half
        return Lease(subnet=subnet, public_ip=public_ip, backend_type="vxlan", v6=v6)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}.BackendData", 'a vxlan lease needs {"VtepMAC": "..."}')
    mac, vni = _vxlan_data(data, f"{path}.BackendData")
    return Lease(subnet=subnet, public_ip=public_ip, backend_type="vxlan", vtep_mac=mac, vni=vni, v6=v6)


def _vxlan_data(data: dict[str, Any], path: str) -> tuple[bytes, int | None]:
    """VtepMAC and VNI of a BackendData or BackendV6Data object (vxlan.go:vxlanLeaseAttrs)."""
    mac_text = get_ci(data, "VtepMAC")
    if not isinstance(mac_text, str):
        raise ConfigError(f"{path}.VtepMAC", f"missing or not a string: {json.dumps(mac_text)}")
    try:
        mac = wire.mac_to_bytes(mac_text)
    except ValueError as exc:
        raise ConfigError(f"{path}.VtepMAC", str(exc)) from None
    if mac[0] & 1:
        raise ConfigError(f"{path}.VtepMAC", f"{mac_text} is a multicast address, not a VTEP")
    vni = get_ci(data, "VNI")
    if vni is not None and (isinstance(vni, bool) or not isinstance(vni, int) or not 0 <= vni <= wire.MAX_VNI):
        raise ConfigError(f"{path}.VNI", f"{json.dumps(vni)} is not a VNI (0..{wire.MAX_VNI})")
    return mac, vni


def _v6_from_attrs(subnet6: ipaddress.IPv6Network, attrs: dict[str, Any], path: str, vxlan: bool) -> LeaseV6:
    """The IPv6 half of a dual-stack lease: PublicIPv6 (null or absent: none) and, for vxlan,
    BackendV6Data (absent: none; flanneld then programs no IPv6 route for it)."""
    public_ipv6 = get_ci(attrs, "PublicIPv6")
    if public_ipv6 is not None:
        try:
            if not isinstance(public_ipv6, str):
                raise ValueError
            public_ipv6 = str(ipaddress.IPv6Address(public_ipv6))  # a copy, canonical (as Go writes it)
        except ValueError:
            raise ConfigError(f"{path}.PublicIPv6", f"{json.dumps(public_ipv6)} is not an IPv6 address") from None
    data = get_ci(attrs, "BackendV6Data") if vxlan else None
    if data is None:
        return LeaseV6(subnet6, public_ipv6)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}.BackendV6Data", 'must be an object like {"VNI": 1, "VtepMAC": "..."}')
    mac, vni = _vxlan_data(data, f"{path}.BackendV6Data")
    return LeaseV6(subnet6, public_ipv6, mac, vni)
