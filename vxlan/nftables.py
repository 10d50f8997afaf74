"""flanneld's nftables traffic manager (``EnableNFTables: true`` in the network config, flannel
>= 0.25): the masquerade and forward rules of ``pkg/trafficmngr/nftables/nftables.go`` (v0.28.9),
in flannel's own tables ``flannel-ipv4`` and ``flannel-ipv6``, written as one ``nft -f``
transaction (atomic, as knftables runs them). Only the IPv4 rules exist until vxland carries
IPv6 overlays; the ``flannel-ipv6`` table is created empty, as flanneld's Init does."""

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


def masq_rules(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, random_fully: bool) -> list[str]:
    """addMasqRules for IPv4: the rules of the postrtg chain, in order."""
    n, s = str(network), str(subnet)
    masquerade = "masquerade fully-random" if random_fully else "masquerade"
    return [
        f"meta mark {KUBE_PROXY_MARK} return",  # kube-proxy's: no double NAT
        f"ip saddr {s} ip daddr {n} return",  # within the overlay: no NAT
        f"ip saddr {n} ip daddr {s} return",
        f"ip saddr != {s} ip daddr {n} return",  # from a node that owns the pod IP
        f"ip saddr {n} ip daddr != 224.0.0.0/4 {masquerade}",  # out of the overlay, not multicast
        f"ip saddr != {n} ip daddr {n} {masquerade}",  # from the host into the overlay
    ]


def forward_rules(network: ipaddress.IPv4Network) -> list[str]:
    """SetupAndEnsureForwardRules for IPv4: accept the overlay's traffic both ways."""
    return [f"ip saddr {network} accept", f"ip daddr {network} accept"]


def _chain(name: str, spec: str, comment: str, rules: list[str]) -> list[str]:
    """A chain of flannel's IPv4 table, flushed, then its rules (knftables' Add, Flush, Add...)."""
    t = f"ip {IPV4_TABLE} {name}"
    return [f'add chain {t} {{ {spec} ; comment "{comment}" ; }}', f"flush chain {t}",
            *(f"add rule {t} {rule}" for rule in rules)]


def script(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, masq: bool, forward: bool,
           random_fully: bool) -> str:
    """The whole transaction: both tables (Init), then each wanted chain, masquerade first as main.go."""
    lines = [_table("ip", IPV4_TABLE), _table("ip6", IPV6_TABLE)]
    if masq:
        lines += _chain(POSTRTG_CHAIN, "type nat hook postrouting priority srcnat",
                        "chain to manage traffic masquerading by flannel", masq_rules(network, subnet, random_fully))
    if forward:
        lines += _chain(FORWARD_CHAIN, "type filter hook forward priority filter", "chain to accept flannel traffic",
                        forward_rules(network))
    return "\n".join(lines) + "\n"


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
        """The rules now in flannel's IPv4 table; [] if it is missing."""
        try:
            return rules_of_listing(self._run(["list", "table", "ip", IPV4_TABLE]))
        except NFTablesError:
            return []

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
                   random_fully: bool) -> list[str]:
    """The rule lines ``nft list`` prints for ``script``'s rules, in order (nft writes the
    mark in full width)."""
    rules = masq_rules(network, subnet, random_fully) if masq else []
    rules = [r.replace(f"mark {KUBE_PROXY_MARK}", "mark 0x00004000") for r in rules]
    return rules + (forward_rules(network) if forward else [])
