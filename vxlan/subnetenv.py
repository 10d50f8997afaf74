"""subnet.env, written as flanneld writes it (``pkg/subnet/subnet.go:WriteSubnetFile``).

Order and format are flannel's, since CNI plugins and ``mk-docker-opts.sh`` read it:
``FLANNEL_NETWORK``, ``FLANNEL_SUBNET`` (lease subnet + 1, lease prefix), with EnableIPv6
``FLANNEL_IPV6_NETWORK`` and ``FLANNEL_IPV6_SUBNET`` (the same for the IPv6 subnet), then
``FLANNEL_MTU``, ``FLANNEL_IPMASQ`` (Go's %t). Written atomically (temp file + rename, mode 0644, directory
created 0755), so a reader never sees half a file.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from pathlib import Path

IPv6Part = tuple[ipaddress.IPv6Network, ipaddress.IPv6Network]  # (IPv6Network, our IPv6 subnet)


def render(network: ipaddress.IPv4Network | None, subnet: ipaddress.IPv4Network | None, mtu: int, ip_masq: bool,
           ipv6: IPv6Part | None = None) -> str:
    """subnet.env as WriteSubnetFile (subnet.go) writes it: an IPv6-only node (``network``
    None) has no FLANNEL_NETWORK and FLANNEL_SUBNET."""
    text = ""
    if network is not None and subnet is not None:
        text = (f"FLANNEL_NETWORK={network}\n"
                f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}\n")
    if ipv6 is not None:
        network6, subnet6 = ipv6
        text += (f"FLANNEL_IPV6_NETWORK={network6}\n"
                 f"FLANNEL_IPV6_SUBNET={subnet6.network_address + 1}/{subnet6.prefixlen}\n")
    return text + f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"


def write(path: Path, network: ipaddress.IPv4Network | None, subnet: ipaddress.IPv4Network | None, mtu: int,
          ip_masq: bool = False, ipv6: IPv6Part | None = None) -> None:
    write_text(path, render(network, subnet, mtu, ip_masq, ipv6))


def write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0644, its directory made 0755."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".subnet.env.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_values(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (godotenv-like: comments and blank lines skipped); {} if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def previous_subnet(path: Path) -> ipaddress.IPv4Network | None:
    """FLANNEL_SUBNET of a previous run as a network (10.5.72.1/24 -> 10.5.72.0/24), as
    flannel's ReadCIDRFromSubnetFile with net.ParseCIDR; None if absent or unparsable."""
    return _previous(path, "FLANNEL_SUBNET", ipaddress.IPv4Network)


def previous_subnet6(path: Path) -> ipaddress.IPv6Network | None:
    """FLANNEL_IPV6_SUBNET of a previous run as a network (fc00:0:0:7::1/64 -> fc00:0:0:7::/64),
    as flannel's ReadIP6CIDRFromSubnetFile; None if absent or unparsable."""
    return _previous(path, "FLANNEL_IPV6_SUBNET", ipaddress.IPv6Network)


def _previous(path: Path, key: str, kind: type):
    value = read_values(path).get(key)
    if not value:
        return None
    try:
        return kind(value, strict=False)
    except ValueError:
        return None
