"""``vxlanctl plan``: read the config and the leases, print (or run once) this host's commands.

The commands come from ``vxlan.plan``; this module does the reading: the registry file, or
etcd through the same store selection as vxland (``--etcd-api``; no waiting: a missing config
is an error here), the underlay interface as vxland picks it, DirectRouting decisions from the
kernel's routes, and whether this kernel has the vxlan module. Nothing is written unless
``--apply`` is given; then every step runs once, in order, skipping those already done.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from vxlan import netconf, plan
from vxlan.config import ConfigError, NetworkConfig, check_supported
from vxlan.lease import Lease


class PlanError(RuntimeError):
    """Nothing to plan; the message says why and what to do."""


@dataclass(frozen=True)
class Request:
    registry_file: Path | None
    etcd: object | None  # registry.select.EtcdSettings
    iface: tuple[str, ...]
    public_ip: str | None
    subnet_file: Path
    ip_masq: bool
    forward_rules: bool


def read_file(path: Path) -> tuple[NetworkConfig, list[Lease]]:
    from vxlan.registry.file import load_registry

    try:
        snap = load_registry(path)
        check_supported(snap.config)
    except ConfigError as exc:
        raise PlanError(str(exc)) from None
    return snap.config, list(snap.leases.values())


async def read_etcd(settings) -> tuple[NetworkConfig, list[Lease], str]:
    """Config and leases from the store that holds the config; (config, leases, store name)."""
    from vxlan.registry import RegistryError
    from vxlan.registry.etcd import parse_config_value, write_config_command
    from vxlan.registry.select import choose_api, probe_config, registries_for
    from vxlan.registry.store import EtcdError

    regs = registries_for(settings)
    apis = tuple(regs)
    try:
        probe = await probe_config(regs)
        key = regs[apis[0]].config_key.decode()
        try:
            api = choose_api(probe, key)
        except RegistryError as exc:
            raise PlanError(str(exc)) from None
        if api is None:
            why = "; ".join(f"{a}: {text}" for a, text in {**probe.absent, **probe.down}.items() if text)
            raise PlanError(f"no network config at {key}" + (f" ({why})" if why else "") + ". Write it with "
                            + " or ".join(write_config_command(a, key) for a in apis))
        try:
            config = parse_config_value(key, probe.values[api])
            check_supported(config)
        except ConfigError as exc:
            raise PlanError(f"{key}: {exc}") from None
        try:
            leases, _ = await regs[api].list_leases()
        except EtcdError as exc:
            raise PlanError(f"reading the leases: {exc}") from None
        return config, leases, regs[api].name
    finally:
        for reg in regs.values():
            await reg.close()


def make(req: Request) -> plan.Plan:
    if req.registry_file is not None:
        config, leases = read_file(req.registry_file)
        source = str(req.registry_file)
    else:
        config, leases, source = asyncio.run(read_etcd(req.etcd))
    if not config.ipv4:
        raise PlanError(f"{source}: an IPv6-only network (EnableIPv4 false): vxlanctl plan prints the commands of "
                        "IPv4 and dual-stack networks only")
    try:
        iface = netconf.find_iface(req.iface, req.public_ip)
    except netconf.NetconfError as exc:
        raise PlanError(str(exc)) from None
    public_ip = req.public_ip or iface.address
    own = next((lease for lease in leases if lease.public_ip == public_ip), None)
    if own is None:
        raise PlanError(f"no lease in {source} has PublicIP {public_ip}: this host has not joined. Start vxland (or "
                        "flanneld) once, or reserve a subnet for it (a lease key without TTL, flannel's "
                        "Documentation/reservations.md); or pass the right --public-ip")
    direct: set = set()
    if config.backend.direct_routing:
        direct = {lease.subnet for lease in leases
                  if lease.subnet != own.subnet and netconf.is_directly_connected(lease.public_ip)}
        if config.ipv6 is not None:  # the IPv6 halves too (vxlan_network.go: v6DirectRoute)
            direct |= {lease.v6.subnet for lease in leases if lease.subnet != own.subnet and lease.v6 is not None
                       and lease.v6.public_ip and netconf.is_directly_connected(lease.v6.public_ip)}
    missing = netconf.kernel_vxlan_missing() if config.backend.type == "vxlan" else None
    result = plan.build(config, own, leases, iface.name, iface.mtu, direct, req.subnet_file, req.ip_masq,
                        req.forward_rules, missing)
    result.notes.insert(0, f"read from {source}")
    return result


def apply(p: plan.Plan) -> int:
    """Run each step once, in order; a step already done is skipped. Exit status 1 at the first
    failure, with the command and its error."""
    for step in p.steps:  # exactly the commands printed
        if step.done_if is not None and subprocess.run(step.done_if, capture_output=True).returncode == 0:
            print(f"kept {step.what} (already there)")
            continue
        proc = subprocess.run(step.cmd, capture_output=True, text=True, input=step.stdin)
        if proc.returncode != 0:
            print(f"FAIL {step.what}: {' '.join(step.cmd)}: {proc.stderr.strip()}", file=sys.stderr)
            return 1
        print(f"ok   {step.what}")
    return 0


def run(req: Request, fmt: str, do_apply: bool) -> int:
    try:
        p = make(req)
    except (PlanError, ValueError) as exc:
        print(f"vxlanctl plan: {exc}", file=sys.stderr)
        return 1
    print(p.render_json() if fmt == "json" else p.render_sh(), end="" if fmt == "sh" else "\n")
    if not do_apply:
        return 0
    if p.backend == "udp":
        print("vxlanctl plan: --apply: the udp backend needs a running vxland; nothing applied", file=sys.stderr)
        return 1
    return apply(p)

