"""flanneld's nftables traffic manager (``EnableNFTables: true`` in the network config, flannel
>= 0.25): the masquerade and forward rules of ``pkg/trafficmngr/nftables/nftables.go`` (v0.28.9),
in flannel's own tables ``flannel-ipv4`` and ``flannel-ipv6``, written as one ``nft -f``
transaction (atomic, as knftables runs them). The ``flannel-ipv6`` table is created empty, as
flanneld's Init does, and gets the same chains for the IPv6Network with EnableIPv6."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess

IPV4_TABLE, IPV6_TABLE = "flannel-ipv4", "flannel-ipv6"
FORWARD_CHAIN, POSTRTG_CHAIN = "forward", "postrtg"
KUBE_PROXY_MARK = "0x4000"  # kube-proxy's masquerade mark: its traffic is its to NAT (nftables.go)


class NFTablesError(RuntimeError):
    pass


def _table(family: str, name: str) -> str:
    return f'add table {family} {name} {{ comment "rules for {name}" ; }}'


def _family(network) -> str:
    return "ip6" if network.version == 6 else "ip"


def masq_rules(network, subnet, random_fully: bool) -> list[str]:
    """addMasqRules: the rules of the postrtg chain, in order (``ip`` or, for an IPv6Network,
    ``ip6`` matches, and ff00::/8 for multicast)."""
    n, s, f = str(network), str(subnet), _family(network)
    masquerade = "masquerade fully-random" if random_fully else "masquerade"
    multicast = "ff00::/8" if network.version == 6 else "224.0.0.0/4"
    return [
        f"meta mark {KUBE_PROXY_MARK} return",  # kube-proxy's: no double NAT
        f"{f} saddr {s} {f} daddr {n} return",  # within the overlay: no NAT
        f"{f} saddr {n} {f} daddr {s} return",
        f"{f} saddr != {s} {f} daddr {n} return",  # from a node that owns the pod IP
        f"{f} saddr {n} {f} daddr != {multicast} {masquerade}",  # out of the overlay, not multicast
        f"{f} saddr != {n} {f} daddr {n} {masquerade}",  # from the host into the overlay
    ]


def forward_rules(network) -> list[str]:
    """SetupAndEnsureForwardRules: accept the overlay's traffic both ways."""
    f = _family(network)
    return [f"{f} saddr {network} accept", f"{f} daddr {network} accept"]


def _chain(family: str, name: str, spec: str, comment: str, rules: list[str]) -> list[str]:
    """A chain of flannel's table of that family, flushed, then its rules (knftables' Add, Flush, Add...)."""
    t = f"{family} {IPV6_TABLE if family == 'ip6' else IPV4_TABLE} {name}"
    return [f'add chain {t} {{ {spec} ; comment "{comment}" ; }}', f"flush chain {t}",
            *(f"add rule {t} {rule}" for rule in rules)]


def script(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masq: bool, forward: bool,
           random_fully: bool, ipv6: tuple | None = None) -> str:
    """The whole transaction: both tables (Init), then each wanted chain, masquerade first as
    main.go, each for IPv4 and then, with ``ipv6`` (IPv6Network, our IPv6 subnet), for IPv6."""
    lines = [_table("ip", IPV4_TABLE), _table("ip6", IPV6_TABLE)]
    pairs = _pairs(network, subnet, ipv6)
    if masq:
        for n, s in pairs:
            lines += _chain(_family(n), POSTRTG_CHAIN, "type nat hook postrouting priority srcnat",
                            "chain to manage traffic masquerading by flannel", masq_rules(n, s, random_fully))
    if forward:
        for n, _ in pairs:
            lines += _chain(_family(n), FORWARD_CHAIN, "type filter hook forward priority filter",
                            "chain to accept flannel traffic", forward_rules(n))
    return "\n".join(lines) + "\n"


def _pairs(network, subnet, ipv6: tuple | None) -> list[tuple]:
    """(Network, our subnet) of each family with rules: an IPv6-only node (``network`` None)
    has none for IPv4 (SetupAndEnsureMasqRules skips an empty flannelIPv4Net), yet both
    tables are made (Init)."""
    return ([(network, subnet)] if network is not None else []) + ([ipv6] if ipv6 is not None else [])


def cleanup_script() -> str:
    """CleanUp: both tables go (adding first makes the delete succeed when one is missing)."""
    return "".join(f"add table {f} {name}\ndelete table {f} {name}\n"
                   for f, name in (("ip", IPV4_TABLE), ("ip6", IPV6_TABLE)))


def rules_of_listing(text: str) -> list[str]:
    """The rule lines of ``nft list table`` output (chains' headers, comments and braces left
    out), handles and counters stripped: what a resync compares."""
    out = []
    for line in text.splitlines():
        line = line.strip().split(" # handle ")[0]
        if not line or line.endswith(("{", "}")) or line.startswith(("comment ", "type ", "table ", "chain ")):
            continue
        out.append(line)
    return out


class NFTables:
    """The ``nft`` binary, run in this network namespace."""

    def __init__(self, binary: str = "nft") -> None:
        path = shutil.which(binary)
        if path is None:
            raise NFTablesError("nft not found (install nftables)")
        self.binary = path

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        try:
            proc = subprocess.run([self.binary, *args], input=stdin, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NFTablesError(f"nft {' '.join(args)}: {exc}") from None
        if proc.returncode:
            raise NFTablesError(f"nft {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def apply(self, text: str) -> None:
        """One transaction: all of it or nothing."""
        self._run(["-f", "-"], text)

    def random_fully(self) -> bool:
        """checkRandomfully (utils.go): whether the kernel takes "masquerade fully-random",
        asked with a dry run (``nft --check``) so that nothing is left behind."""
        test = (f"add table ip {IPV4_TABLE}\n"
                f"add chain ip {IPV4_TABLE} masqueradeTest {{ type nat hook postrouting priority srcnat ; }}\n"
                f"add rule ip {IPV4_TABLE} masqueradeTest ip saddr != 127.0.0.1 masquerade fully-random\n")
        try:
            self._run(["--check", "-f", "-"], test)
            return True
        except NFTablesError:
            return False

    def listed_rules(self) -> list[str]:
        """The rules now in flannel's tables, IPv4's first; a missing table lists none."""
        out = []
        for family, name in (("ip", IPV4_TABLE), ("ip6", IPV6_TABLE)):
            try:
                out += rules_of_listing(self._run(["list", "table", family, name]))
            except NFTablesError:
                continue
        return out

    def has_tables(self) -> bool:
        """Whether either of flannel's tables is there."""
        for family, name in (("ip", IPV4_TABLE), ("ip6", IPV6_TABLE)):
            try:
                self._run(["list", "table", family, name])
                return True
            except NFTablesError:
                continue
        return False

    def cleanup(self) -> None:
        self.apply(cleanup_script())


def expected_rules(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masq: bool, forward: bool,
                   random_fully: bool, ipv6: tuple | None = None) -> list[str]:
    """The rule lines ``nft list`` prints for ``script``'s rules, table by table, chain by
    chain as listed (postrtg before forward; nft writes the mark in full width)."""
    out = []
    for n, s in _pairs(network, subnet, ipv6):
        rules = masq_rules(n, s, random_fully) if masq else []
        rules = [r.replace(f"mark {KUBE_PROXY_MARK}", "mark 0x00004000") for r in rules]
        out += rules + (forward_rules(n) if forward else [])
    return out
