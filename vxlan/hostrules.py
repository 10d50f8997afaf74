"""The host's iptables rules for the overlay: --ip-masq's masquerade rules and the forward
rules, as flanneld's ``main.go`` sets them up (``pkg/trafficmngr/iptables``), the rules an older
flanneld left in the built-in chains, and the loops that put back what someone deleted."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from vxlan import iptables, nftables, subnetenv
from vxlan.backends import StartupError

if TYPE_CHECKING:
    from vxlan.options import Options

log = logging.getLogger("vxland")


async def install(opts: Options, network, subnet, use_nftables: bool = False,
                  ipv6: tuple | None = None) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """--ip-masq and the forward rules, as flanneld's main.go sets them up (pkg/trafficmngr/iptables);
    ``network`` None: an IPv6-only node, no IPv4 rules.

    Hosts without iptables (or without netfilter, as under gVisor) are among vxland's
    users: there the default forward rules are skipped with an error in the log, as
    flanneld does; an explicit --ip-masq that cannot be honoured stops start-up instead,
    so pods do not come up without the masquerading they were promised. ``ipv6`` (IPv6Network,
    our IPv6 subnet; EnableIPv6): the same rules for IPv6 too, with ip6tables (masqIP6Rules)
    or in the flannel-ipv6 nftables table. Returns each rule set's resync loop, for the caller
    to run."""
    if not (opts.ip_masq or opts.iptables_forward_rules):
        return []

    def failed(what: str, exc: Exception) -> None:
        if opts.ip_masq:
            raise StartupError(f"--ip-masq: {what}: {exc}") from None
        log.error("forward rules not installed (%s: %s); pass --iptables-forward-rules=false if this "
                  "host has no iptables", what, exc)

    if use_nftables:
        return await _install_nftables(opts, network, subnet, failed, ipv6)
    await asyncio.to_thread(_remove_nftables)
    try:
        ipt = await asyncio.to_thread(iptables.IPTables)
    except iptables.IPTablesError as exc:
        failed("iptables", exc)
        return []
    old = subnetenv.read_values(opts.subnet_file)
    prev_net, prev_subnet = old.get("FLANNEL_NETWORK"), subnetenv.previous_subnet(opts.subnet_file)
    resyncs = []
    if network is not None:  # an IPv6-only node has no IPv4 rules (main.go: only if EnableIPv4)
        await _remove_legacy_rules(opts, ipt, network, subnet, prev_net, prev_subnet)
        resyncs = await _install_rule_sets(opts, ipt, "", network, subnet, prev_net, prev_subnet, failed)
    if ipv6 is not None:
        # SetupAndEnsureMasqRules' and SetupAndEnsureForwardRules' IPv6 halves (iptables.go): the
        # same chains and rules with ip6tables for the IPv6Network
        try:
            ipt6 = await asyncio.to_thread(iptables.IPTables, "ip6tables")
        except iptables.IPTablesError as exc:
            failed("ip6tables", exc)
            return resyncs
        resyncs += await _install_rule_sets(opts, ipt6, "IPv6 ", *ipv6, old.get("FLANNEL_IPV6_NETWORK"),
                                            subnetenv.previous_subnet6(opts.subnet_file), failed)
    return resyncs


async def _install_rule_sets(opts: Options, ipt, label: str, network, subnet, prev_net: str | None, prev_subnet,
                             failed) -> list:
    """The masquerade (--ip-masq; the previous Network's and subnet's first removed, when they
    changed) and forward rules of one family, each with its resync loop."""
    rule_sets = []
    if opts.ip_masq:
        random_fully = opts.masq_random_fully and ipt.random_fully
        await _remove_previous_masq(ipt, network, subnet, prev_net, prev_subnet, random_fully)
        rule_sets.append((f"{label}masquerade", iptables.masq_rules(network, subnet, random_fully)))
    if opts.iptables_forward_rules:
        rule_sets.append((f"{label}forward", iptables.forward_rules(network)))
    resyncs = []
    for name, rules in rule_sets:
        try:
            await asyncio.to_thread(ipt.apply, rules, True)
        except iptables.IPTablesError as exc:
            failed(f"installing the {name} rules", exc)
            continue
        via = "ip6tables, " if ipt.binary == "ip6tables" else ""
        log.info("%s rules installed (%s%s)", name, via, iptables.flavour(ipt.version))
        resyncs.append((name, lambda ipt=ipt, name=name, rules=rules: _resync(opts, ipt, name, rules)))
    return resyncs


async def _remove_previous_masq(ipt, network, subnet, prev_net: str | None, prev_subnet, random_fully: bool) -> None:
    """The masquerade rules of the previous Network and subnet (subnet.env), when they changed."""
    if not prev_net or prev_subnet is None or (prev_net == str(network) and prev_subnet == subnet):
        return
    log.info("network or subnet (%s, %s) differ from the previous ones (%s, %s): removing the old "
             "masquerade rules", network, subnet, prev_net, prev_subnet)
    try:
        old_rules = iptables.masq_rules(ipaddress.ip_network(prev_net, strict=False), prev_subnet, random_fully)
        await asyncio.to_thread(ipt.delete, old_rules)
    except (ValueError, iptables.IPTablesError) as exc:
        log.warning("could not remove the old masquerade rules: %s", exc)


async def _remove_legacy_rules(opts: Options, ipt, network, subnet, prev_net: str | None, prev_subnet) -> None:
    """flanneld <= 0.19 put its rules straight into POSTROUTING and FORWARD (flannel v0.17.0
    network/iptables.go); on a host it ran on they stay, and beside vxland's chains they would
    apply twice. Those of the rule kinds vxland installs go, for this Network and subnet and
    for the previous ones in subnet.env."""
    pairs = {(network, subnet)}
    if prev_net and prev_subnet is not None:
        try:
            pairs.add((ipaddress.IPv4Network(prev_net, strict=False), prev_subnet))
        except ValueError:
            pass
    tables = ({"nat"} if opts.ip_masq else set()) | ({"filter"} if opts.iptables_forward_rules else set())
    legacy = [r for n, s in pairs for r in iptables.legacy_rules(n, s) if r.table in tables]
    try:
        found = await asyncio.to_thread(lambda: [r for r in legacy if ipt.exists(r)])
        if found:
            await asyncio.to_thread(ipt.delete, found)
            log.info("removed %d iptables rules flanneld <= 0.19 left in POSTROUTING/FORWARD; vxland's "
                     "FLANNEL-POSTRTG/FLANNEL-FWD chains replace them", len(found))
    except iptables.IPTablesError as exc:
        log.warning("could not remove the rules of an older flanneld: %s", exc)

async def _resync(opts: Options, ipt, name: str, rules) -> None:
    """ensureIPTables: every --iptables-resync seconds, rebuild the set if a rule is missing."""
    while True:
        await asyncio.sleep(opts.iptables_resync_s)
        try:
            if not await asyncio.to_thread(ipt.all_exist, rules):
                log.info("some %s rules are missing; deleting and recreating them", name)
                await asyncio.to_thread(ipt.apply, rules)
        except iptables.IPTablesError as exc:
            log.error("failed to ensure the %s rules: %s", name, exc)


# -- EnableNFTables: flanneld's nftables traffic manager (vxlan.nftables) -----------------------

def _remove_nftables() -> None:
    """main.go cleans up the traffic manager it does not use: flannel's nftables tables go when
    the config says iptables (a host that ran flanneld with EnableNFTables before)."""
    try:
        nft = nftables.NFTables()
        if nft.has_tables():
            nft.cleanup()
            log.info("removed flannel's nftables tables (%s, %s): the config does not enable nftables",
                     nftables.IPV4_TABLE, nftables.IPV6_TABLE)
    except nftables.NFTablesError:
        pass  # no nft here: nothing of it to clean


def _remove_iptables(network, subnet, ipv6: tuple | None = None) -> None:
    """... and with nftables, the iptables (and ip6tables) rules vxland or flanneld put there
    for this Network (and IPv6Network)."""
    for binary, (net, sub) in ([("iptables", (network, subnet))] if network is not None else []) + \
            ([("ip6tables", ipv6)] if ipv6 else []):
        try:
            ipt = iptables.IPTables(binary)
            rules = [*iptables.masq_rules(net, sub, True), *iptables.masq_rules(net, sub, False),
                     *iptables.forward_rules(net)]
            found = [r for r in dict.fromkeys(rules) if ipt.exists(r)]
            if found:
                ipt.delete(found)
                log.info("removed %d %s rules: the config enables nftables", len(found), binary)
        except iptables.IPTablesError:
            pass  # no iptables here: nothing of it to clean


async def _install_nftables(opts: Options, network, subnet, failed,
                            ipv6: tuple | None = None) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
    """SetupAndEnsureMasqRules and SetupAndEnsureForwardRules of flannel's nftables manager, in
    one transaction; and a resync, which flanneld's nftables mode has not: a rule someone
    deleted is put back within --iptables-resync seconds, as the iptables rules are."""
    await asyncio.to_thread(_remove_iptables, network, subnet, ipv6)
    try:
        nft = await asyncio.to_thread(nftables.NFTables)
        random_fully = opts.masq_random_fully and await asyncio.to_thread(nft.random_fully)
        text = nftables.script(network, subnet, opts.ip_masq, opts.iptables_forward_rules, random_fully, ipv6)
        await asyncio.to_thread(nft.apply, text)
    except nftables.NFTablesError as exc:
        failed("nftables", exc)
        return []
    want = nftables.expected_rules(network, subnet, opts.ip_masq, opts.iptables_forward_rules, random_fully, ipv6)
    what = " and ".join(n for n, on in (("masquerade", opts.ip_masq), ("forward", opts.iptables_forward_rules)) if on)
    log.info("%s rules installed (nftables, tables %s and %s)", what, nftables.IPV4_TABLE, nftables.IPV6_TABLE)

    async def resync() -> None:
        while True:
            await asyncio.sleep(opts.iptables_resync_s)
            try:
                if await asyncio.to_thread(nft.listed_rules) != want:
                    log.info("flannel's nftables rules changed; putting them back")
                    await asyncio.to_thread(nft.apply, text)
            except nftables.NFTablesError as exc:
                log.error("failed to ensure the nftables rules: %s", exc)

    return [("nftables", resync)]
