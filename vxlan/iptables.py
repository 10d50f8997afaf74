"""``--ip-masq`` and the forward rules, exactly as flanneld >= 0.22 installs them.

Rules and order: ``pkg/trafficmngr/iptables/iptables.go:masqRules`` / ``forwardRules``.
Applied as flanneld's ``ipTablesBootstrap`` does: each rule that already
exists is deleted and re-appended in one ``iptables-restore --noflush`` transaction, so the set
stays in order with nothing of anyone else's between; re-checked every ``--iptables-resync``
seconds and rebuilt if any rule is missing (``ensureIPTables``). Rules left by a previous
Network or subnet (read from the old subnet.env) are deleted first (``SetupAndEnsureMasqRules``).

``masq_rules``/``forward_rules``/``restore_payload`` are pure; ``IPTables`` runs the binaries
(whichever ``iptables`` is first on PATH: nft or legacy, as go-iptables does).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from dataclasses import dataclass

KUBE_PROXY_MARK = "0x4000/0x4000"  # pkg/trafficmngr/trafficmngr.go KubeProxyMark
MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
POSTRTG = "FLANNEL-POSTRTG"
FWD = "FLANNEL-FWD"


@dataclass(frozen=True)
class Rule:
    table: str
    chain: str
    spec: tuple[str, ...]

    def line(self, action: str = "-A") -> str:
        """The rule as iptables-save prints it (and iptables-restore reads it)."""
        return " ".join([action, self.chain, *(f'"{s}"' if " " in s else s for s in self.spec)])


def _c(comment: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", comment)


def masq_rules(network, subnet, random_fully: bool) -> list[Rule]:
    """masqRules, or for an IPv6Network masqIP6Rules (ip6tables; multicast ff00::/8)."""
    n, s = str(network), str(subnet)
    rf = ("--random-fully",) if random_fully else ()
    multicast = "ff00::/8" if network.version == 6 else "224.0.0.0/4"
    return [
        Rule("nat", "POSTROUTING", (*_c(MASQ_COMMENT), "-j", POSTRTG)),
        # traffic kube-proxy marked is its to masquerade (double NAT on some kernels otherwise)
        Rule("nat", POSTRTG, ("-m", "mark", "--mark", KUBE_PROXY_MARK, *_c(MASQ_COMMENT), "-j", "RETURN")),
        Rule("nat", POSTRTG, ("-s", s, "-d", n, *_c(MASQ_COMMENT), "-j", "RETURN")),
        Rule("nat", POSTRTG, ("-s", n, "-d", s, *_c(MASQ_COMMENT), "-j", "RETURN")),
        Rule("nat", POSTRTG, ("!", "-s", n, "-d", s, *_c(MASQ_COMMENT), "-j", "RETURN")),
        Rule("nat", POSTRTG, ("-s", n, "!", "-d", multicast, *_c(MASQ_COMMENT), "-j", "MASQUERADE", *rf)),
        Rule("nat", POSTRTG, ("!", "-s", n, "-d", n, *_c(MASQ_COMMENT), "-j", "MASQUERADE", *rf)),
    ]


def forward_rules(network) -> list[Rule]:
    n = str(network)
    return [
        Rule("filter", "FORWARD", (*_c(FORWARD_COMMENT), "-j", FWD)),
        Rule("filter", FWD, ("-s", n, *_c(FORWARD_COMMENT), "-j", "ACCEPT")),
        Rule("filter", FWD, ("-d", n, *_c(FORWARD_COMMENT), "-j", "ACCEPT")),
    ]


def legacy_rules(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network) -> list[Rule]:
    """Every rule flanneld 0.10-0.19 may have left for this Network and subnet: the four
    masquerade rules directly in nat POSTROUTING and the two forward rules directly in filter
    FORWARD (flannel v0.17.0 ``network/iptables.go:MasqRules``/``ForwardRules``), with the
    comments of >= 0.16.2 and without, with ``--random-fully`` and without. flanneld >= 0.20
    keeps them in its own chains instead, which ``apply`` rebuilds."""
    n, s = str(network), str(subnet)
    rules = []
    for comment in ((), _c(MASQ_COMMENT)):
        for rf in ((), ("--random-fully",)):
            masq = ("-j", "MASQUERADE", *rf)
            rules += [Rule("nat", "POSTROUTING", ("-s", n, "!", "-d", "224.0.0.0/4", *comment, *masq)),
                      Rule("nat", "POSTROUTING", ("!", "-s", n, "-d", n, *comment, *masq))]
        rules += [Rule("nat", "POSTROUTING", ("-s", n, "-d", n, *comment, "-j", "RETURN")),
                  Rule("nat", "POSTROUTING", ("!", "-s", n, "-d", s, *comment, "-j", "RETURN"))]
    for comment in ((), _c(FORWARD_COMMENT)):
        rules += [Rule("filter", "FORWARD", ("-s", n, *comment, "-j", "ACCEPT")),
                  Rule("filter", "FORWARD", ("-d", n, *comment, "-j", "ACCEPT"))]
    return rules


def restore_payload(rules: list[Rule], existing: set[Rule], append: bool = True) -> str:
    """iptables-restore input: per table, ``-D`` for each rule that exists, then (``append``)
    ``-A`` for every rule, in order; one COMMIT per table."""
    tables: dict[str, list[str]] = {}
    for rule in rules:
        lines = tables.setdefault(rule.table, [])
        if rule in existing:
            lines.append(rule.line("-D"))
        if append:
            lines.append(rule.line("-A"))
    out = []
    for table, lines in tables.items():
        if lines:
            out += [f"*{table}", *lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def version_has_random_fully(version_text: str) -> bool:
    """go-iptables HasRandomFully: iptables >= 1.6.2."""
    m = re.search(r"v(\d+)\.(\d+)\.(\d+)", version_text)
    return m is not None and tuple(map(int, m.groups())) >= (1, 6, 2)


def flavour(version_text: str) -> str:
    """``nf_tables`` or ``legacy``, from ``iptables --version``."""
    return "nf_tables" if "nf_tables" in version_text else "legacy"


class IPTablesError(RuntimeError):
    pass


class IPTables:
    """Runs iptables / iptables-restore. Blocking: the daemon calls it from a thread."""

    def __init__(self, binary: str = "iptables") -> None:
        """``binary``: iptables, or ip6tables for the IPv6 rules."""
        self.binary = binary
        self.restore = binary + "-restore"
        self.version = self._run([binary, "--version"]).stdout.strip()

    def _run(self, cmd: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise IPTablesError(f"{cmd[0]} is not installed (Debian: apt-get install iptables)") from None
        except subprocess.TimeoutExpired:
            raise IPTablesError(f"{' '.join(cmd)}: no answer in 30 s (xtables lock held?)") from None
        if check and proc.returncode != 0:
            raise IPTablesError(f"{' '.join(cmd[:4])}...: {proc.stderr.strip()}")
        return proc

    @property
    def random_fully(self) -> bool:
        return version_has_random_fully(self.version)

    def chain_exists(self, table: str, chain: str) -> bool:
        return self._run([self.binary, "-w", "5", "-t", table, "-S", chain], check=False).returncode == 0

    def ensure_chain(self, table: str, chain: str) -> None:
        if not self.chain_exists(table, chain):
            self._run([self.binary, "-w", "5", "-t", table, "-N", chain])

    def exists(self, rule: Rule) -> bool:
        if rule.chain in (POSTRTG, FWD) or rule.spec[-1] in (POSTRTG, FWD):
            chain = rule.chain if rule.chain in (POSTRTG, FWD) else rule.spec[-1]
            if not self.chain_exists(rule.table, chain):
                return False
        cmd = [self.binary, "-w", "5", "-t", rule.table, "-C", rule.chain, *rule.spec]
        return self._run(cmd, check=False).returncode == 0

    def all_exist(self, rules: list[Rule]) -> bool:
        return all(self.exists(rule) for rule in rules)

    def apply(self, rules: list[Rule], flush: bool = False) -> None:
        """Create our chains (``flush``: emptied first, as flanneld's CreateIP4Chain does at
        start-up), then delete-and-append every rule in one transaction."""
        for chain_table, chain in sorted({(r.table, r.chain) for r in rules if r.chain in (POSTRTG, FWD)}):
            self.ensure_chain(chain_table, chain)
            if flush:
                self._run([self.binary, "-w", "5", "-t", chain_table, "-F", chain])
        existing = {rule for rule in rules if self.exists(rule)}
        self._run([self.restore, "-w", "5", "--noflush"], stdin=restore_payload(rules, existing))

    def delete(self, rules: list[Rule]) -> None:
        existing = {rule for rule in rules if self.exists(rule)}
        payload = restore_payload(rules, existing, append=False)
        if payload:
            self._run([self.restore, "-w", "5", "--noflush"], stdin=payload)
