"""``vxlanctl doctor``: can vxland run on this host, and if not, what to do about it.

Each check says ok, warn or FAIL, and with anything but ok the fix. Read-only apart from two
short-lived probes that leave nothing behind: a TUN device that vanishes when closed, and a
vxlan device made in a scratch network namespace. Exit status 1 if any check failed.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vxlan import iptables, netconf, wire
from vxlan.config import ConfigError, NetworkConfig, check_supported

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""
    config: NetworkConfig | None = None  # the "config" check's: what the later checks look at


def check_tun(path: str = "/dev/net/tun") -> Check:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        return Check("tun", "FAIL", f"cannot open {path}: {exc.strerror}",
                     "load the module (modprobe tun); in a container pass the device (docker run --device "
                     "/dev/net/tun --cap-add NET_ADMIN); or create it: "
                     "mkdir -p /dev/net && mknod /dev/net/tun c 10 200")
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", f"vxdoc{os.getpid() % 100000}".encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        fix = ("run as root or give CAP_NET_ADMIN" if exc.errno == errno.EPERM
               else f"{path} is not a working TUN device (is the tun module loaded?)")
        return Check("tun", "FAIL", f"cannot create a TUN device: {exc.strerror}", fix)
    finally:
        os.close(fd)
    return Check("tun", "ok", f"{path} works")


def check_kernel_vxlan() -> Check:
    missing = netconf.kernel_vxlan_missing()
    if missing is None:
        return Check("kernel-vxlan", "ok", "this kernel could do vxlan itself (flanneld's vxlan backend would work "
                     "too); vxland works either way")
    if missing.startswith("cannot probe"):
        return Check("kernel-vxlan", "warn", missing, "install iproute2")
    return Check("kernel-vxlan", "ok", f"no kernel vxlan ({missing}): the case vxland is for")


def check_etcd(settings) -> list[Check]:
    """etcd reachable, and the network config present (in the store ``--etcd-api`` names, or in
    either with auto) and valid."""
    from vxlan.registry import RegistryError
    from vxlan.registry.etcd import write_config_command
    from vxlan.registry.select import choose_api, registries_for

    try:
        regs = registries_for(settings)
        apis = tuple(regs)
    except ValueError as exc:
        return [Check("etcd", "FAIL", str(exc), "fix the --etcd-* flags")]
    key = f"{settings.prefix.rstrip('/')}/config"
    found, detail = _probe_etcd(regs)
    if found is None or len(found.down) == len(apis):
        detail = "; ".join(found.down.values()) if found is not None else detail
        return [Check("etcd", "FAIL", f"cannot reach etcd at {settings.endpoints}: {detail}",
                      "start etcd, or point --etcd-endpoints (and --etcd-*file for TLS) at a running member")]
    checks = [Check("etcd", "ok", f"reachable at {settings.endpoints}")]
    try:
        api = choose_api(found, key)
    except RegistryError as exc:
        return checks + [Check("config", "FAIL", str(exc), "keep the config in one store only")]
    if api is None:
        notes = "; ".join(f"{a}: {why}" for a, why in found.absent.items() if why)
        fix = " or ".join(write_config_command(a, key) for a in apis)
        return checks + [Check("config", "FAIL", f"no network config at {key}" + (f" ({notes})" if notes else ""),
                               fix)]
    return checks + [_check_config_value(api, key, found.values[api])]


def _probe_etcd(regs: dict) -> tuple[object | None, str]:
    """select.probe_config over the stores (8 s at most), then close them; (found, why not)."""
    from vxlan.registry.select import probe_config

    async def probe():
        try:
            return await asyncio.wait_for(probe_config(regs), 8)
        finally:
            for reg in regs.values():
                await reg.close()
    try:
        return asyncio.run(probe()), ""
    except Exception as exc:  # any failure to talk to etcd is the finding here
        return None, str(exc) or type(exc).__name__


def _check_config_value(api: str, key: str, value: bytes) -> Check:
    from vxlan.registry.etcd import parse_config_value, write_config_command

    try:
        config = parse_config_value(key, value)
    except ConfigError as exc:
        return Check("config", "FAIL", f"{key} is invalid: {exc}", f"correct it, e.g. {write_config_command(api, key)}")
    try:
        check_supported(config)
    except ConfigError as exc:
        return Check("config", "FAIL", f"{key}: {exc}", "run flanneld on this node, or leave EnableIPv6 out")
    network = f"Network {config.network}" if config.ipv4 else "IPv6-only (EnableIPv4 false)"
    detail = f"{network}, backend {config.backend.type}, etcd {api} store"
    # which traffic manager --ip-masq and the forward rules use (flannel >= 0.25's EnableNFTables)
    detail += ", host rules with nftables (EnableNFTables)" if config.enable_nftables else ", host rules with iptables"
    if config.backend_missing:
        detail += " (no Backend in the config: flanneld's code, and vxland, then run udp)"
    if config.backend.type == "vxlan":
        detail += f", VNI {config.backend.vni}"
    if config.backend.type in ("vxlan", "udp"):
        detail += f", port {config.backend.port}"
    if config.ipv6 is not None:
        detail += f", EnableIPv6 {config.ipv6.network}"
    return Check("config", "ok", detail, config=config)


def check_mtu(ifaces: tuple[str, ...], ipv6_only: bool = False) -> tuple[Check, netconf.Iface | None]:
    try:
        iface = netconf.find_iface(ifaces, None, ipv6_only=ipv6_only)
    except netconf.NetconfError as exc:
        if not ifaces:  # fine for vxland started with --iface, as most are
            return Check("underlay", "warn", str(exc), "give vxland (and this check) --iface NAME"), None
        return Check("underlay", "FAIL", str(exc), "pass --iface NAME (or its IPv4 address)"), None
    inner = iface.mtu - wire.ENCAP_OVERHEAD
    if iface.mtu < 1500:
        return Check("underlay", "warn", f"{iface.name} {iface.address} MTU {iface.mtu}: pods get MTU {inner}",
                     "fine if every node agrees; CNI reads FLANNEL_MTU from subnet.env"), iface
    return Check("underlay", "ok", f"{iface.name} {iface.address} MTU {iface.mtu} (overlay MTU {inner})"), iface


def port_holder(port: int) -> tuple[int, list[str]] | None:
    """The process holding UDP ``port`` in this network namespace: (pid, argv), or None. From
    /proc/net/udp (this namespace's sockets) and the processes' open sockets."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if inodes else ():
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid), Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone, or not ours to read
    return None


def is_vxland(argv: list[str]) -> bool:
    return any(Path(a).name == "vxland" for a in argv) or any(
        a == "-m" and b == "vxlan" for a, b in zip(argv, argv[1:], strict=False))


def flag_values(argv: list[str], flag: str) -> list[str]:
    """Values of a repeatable flag in a flanneld-style command line (-f v, --f v, -f=v, --f=v)."""
    out = []
    for i, arg in enumerate(argv):
        name, eq, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == flag:
            if eq:
                out.append(value)
            elif i + 1 < len(argv):
                out.append(argv[i + 1])
    return out


def check_port(port: int, healthz_port: int, holder: tuple[int, list[str]] | None = None,
               families: tuple[int, ...] = (socket.AF_INET,)) -> Check:
    """UDP ``port`` free in each underlay family vxland binds it in (IPv6 with EnableIPv6)."""
    free = True
    for family in families:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return Check("port", "FAIL", f"UDP {port}: {exc.strerror}", "run as root")
                free = False
    if free:
        return Check("port", "ok", f"UDP {port} is free")
    if holder is not None and is_vxland(holder[1]):
        return Check("port", "ok", f"UDP {port} is held by the running vxland (pid {holder[0]})")
    if healthz_port and _running_vxland(healthz_port):
        return Check("port", "ok", f"UDP {port} is held by the vxland answering on :{healthz_port}")
    return Check("port", "FAIL", f"UDP {port} is taken by another program",
                 f"find it with: ss -ulpn 'sport = :{port}' (a kernel vxlan device such as flannel.1, flanneld, or "
                 "another vxland); stop it, or use another Backend.Port on every node")


def _running_vxland(healthz_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{healthz_port}/metrics", timeout=2) as resp:
            return b"vxland_info" in resp.read()
    except OSError:
        return False


def check_ipv6(iface: netconf.Iface | None, public_ipv6: str | None) -> list[Check]:
    """EnableIPv6: an IPv6 underlay address (what vxland takes: --public-ipv6, else the
    interface's first global one) and IPv6 forwarding for the pods' IPv6 traffic."""
    checks = []
    if public_ipv6:
        checks.append(Check("underlay6", "ok", f"--public-ipv6 {public_ipv6}"))
    elif iface is not None:
        address = netconf.iface_ipv6(iface.index)
        if address is None:  # vxland's start-up error, flanneld's words
            checks.append(Check("underlay6", "FAIL", f"failed to find IPv6 address for interface {iface.name}",
                                f"give {iface.name} a global IPv6 address, or pass --public-ipv6"))
        else:
            checks.append(Check("underlay6", "ok", f"{iface.name} {address}"))
    if netconf.ip_forward_enabled(ipv6=True):
        checks.append(Check("ip6_forward", "ok", "net.ipv6.conf.all.forwarding = 1"))
    else:
        checks.append(Check("ip6_forward", "FAIL", "net.ipv6.conf.all.forwarding = 0: this host will not forward "
                                                   "pod IPv6 traffic",
                            "sysctl -w net.ipv6.conf.all.forwarding=1 (and persist it); flanneld does not set it"))
    return checks


def check_ip_forward() -> Check:
    if netconf.ip_forward_enabled():
        return Check("ip_forward", "ok", "net.ipv4.ip_forward = 1")
    return Check("ip_forward", "FAIL", "net.ipv4.ip_forward = 0: this host will not forward pod traffic",
                 "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/); flanneld does not set it either")


def check_iptables() -> Check:
    try:
        ipt = iptables.IPTables()
    except iptables.IPTablesError as exc:
        return Check("iptables", "warn", str(exc),
                     "needed for --ip-masq and the FORWARD rules: apt-get install iptables")
    flavour = iptables.flavour(ipt.version)
    other = "iptables-legacy-save" if flavour == "nf_tables" else "iptables-nft-save"
    detail = f"{ipt.version}; --random-fully {'supported' if ipt.random_fully else 'not supported'}"
    try:
        foreign = subprocess.run([other], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        foreign = ""
    if any(line.startswith("-A ") for line in foreign.splitlines()):
        return Check("iptables", "warn", f"{detail}; but {other} shows rules too",
                     "two iptables back ends in use: make kube-proxy, docker and vxland use the same one "
                     "(update-alternatives --config iptables)")
    return Check("iptables", "ok", detail)


def check_nftables() -> Check:
    """EnableNFTables: the nft binary writes the rules (vxlan.nftables)."""
    from vxlan import nftables

    try:
        nftables.NFTables()
    except nftables.NFTablesError as exc:
        return Check("nftables", "FAIL", f"the config enables nftables but {exc}",
                     "apt-get install nftables, or drop EnableNFTables from the config")
    return Check("nftables", "ok", "nft found: --ip-masq and the forward rules go to tables flannel-ipv4/-ipv6")


def run_all(args, settings=None) -> list[Check]:
    """Every check; ``settings``: the etcd flags (registry.select.EtcdSettings) unless a registry file is given."""
    checks = [check_tun(), check_kernel_vxlan()]
    port = wire.DEFAULT_PORT
    if args.registry_file is not None:
        from vxlan.registry.file import load_registry

        try:
            snap = load_registry(args.registry_file)
            check_supported(snap.config)
            rules = "nftables (EnableNFTables)" if snap.config.enable_nftables else "iptables"
            ipv6 = f", EnableIPv6 {snap.config.ipv6.network}" if snap.config.ipv6 is not None else ""
            checks.append(Check("config", "ok", f"{args.registry_file}: Network {snap.config.network}, "
                                                f"host rules with {rules}{ipv6}", config=snap.config))
        except ConfigError as exc:
            checks.append(Check("config", "FAIL", str(exc), "fix the file or the field named"))
    else:
        checks += check_etcd(settings)
    config = next((c.config for c in checks if c.config is not None), None)
    if config is not None and config.backend.port:
        port = config.backend.port
    # A vxland already running here: its port is no conflict, and its --iface is the underlay.
    holder = port_holder(port)
    ifaces = tuple(args.iface)
    if not ifaces and holder is not None and is_vxland(holder[1]):
        ifaces = tuple(flag_values(holder[1], "iface"))
    mtu_check, iface = check_mtu(ifaces, config is not None and not config.ipv4)
    families = ((socket.AF_INET,) if config is None or config.ipv4 else ()) + \
        ((socket.AF_INET6,) if config is not None and config.ipv6 is not None else ())
    checks += [mtu_check, check_port(port, args.healthz_port, holder, families), check_ip_forward()]
    if config is not None and config.ipv6 is not None:
        checks += check_ipv6(iface, args.public_ipv6)
    checks.append(check_nftables() if config is not None and config.enable_nftables else check_iptables())
    return checks


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status:<4} {c.name:<12} {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<17} fix: {c.fix}")
    failed = [c.name for c in checks if c.status == "FAIL"]
    lines.append(f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all good")
    return "\n".join(lines)
