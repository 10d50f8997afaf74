"""The IPv6 host rules of a dual-stack node (EnableIPv6), as flanneld v0.28.9 writes them:
masqIP6Rules and the IPv6 forward rules with ip6tables (pkg/trafficmngr/iptables/iptables.go),
or the flannel-ipv6 nftables table (pkg/trafficmngr/nftables/nftables.go). Pure: the rule
lists and the nft transaction; the lab test applies them."""

from __future__ import annotations

import ipaddress

from vxlan import iptables, nftables

N4, S4 = ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.3.0/24")
N6, S6 = ipaddress.IPv6Network("fd07::/48"), ipaddress.IPv6Network("fd07:0:0:3::/64")


def test_masq_ip6_rules_are_masq_rules_with_the_ipv6_multicast_range():
    v6 = [r.line() for r in iptables.masq_rules(N6, S6, True)]
    assert v6 == [
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
        "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s fd07:0:0:3::/64 -d fd07::/48 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s fd07::/48 -d fd07:0:0:3::/64 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG ! -s fd07::/48 -d fd07:0:0:3::/64 -m comment --comment \"flanneld masq\" -j RETURN",
        "-A FLANNEL-POSTRTG -s fd07::/48 ! -d ff00::/8 -m comment --comment \"flanneld masq\" -j MASQUERADE "
        "--random-fully",
        "-A FLANNEL-POSTRTG ! -s fd07::/48 -d fd07::/48 -m comment --comment \"flanneld masq\" -j MASQUERADE "
        "--random-fully",
    ]
    assert "224.0.0.0/4" in iptables.masq_rules(N4, S4, True)[5].line()
    assert [r.line() for r in iptables.forward_rules(N6)][1:] == [
        "-A FLANNEL-FWD -s fd07::/48 -m comment --comment \"flanneld forward\" -j ACCEPT",
        "-A FLANNEL-FWD -d fd07::/48 -m comment --comment \"flanneld forward\" -j ACCEPT"]


def test_the_nftables_transaction_fills_the_ipv6_table_too():
    text = nftables.script(N4, S4, True, True, False, (N6, S6))
    assert "add chain ip6 flannel-ipv6 postrtg { type nat hook postrouting priority srcnat ;" in text
    assert "add rule ip6 flannel-ipv6 postrtg ip6 saddr fd07::/48 ip6 daddr != ff00::/8 masquerade\n" in text
    assert "add rule ip6 flannel-ipv6 forward ip6 daddr fd07::/48 accept\n" in text
    # IPv4 first (flanneld's order: masquerade v4, v6, then forward v4, v6)
    assert text.index("ip flannel-ipv4 postrtg") < text.index("ip6 flannel-ipv6 postrtg") < \
        text.index("ip flannel-ipv4 forward") < text.index("ip6 flannel-ipv6 forward")
    want = nftables.expected_rules(N4, S4, True, True, False, (N6, S6))
    assert want[-2:] == ["ip6 saddr fd07::/48 accept", "ip6 daddr fd07::/48 accept"]
    assert "ip6" not in nftables.script(N4, S4, True, True, False).split("flannel-ipv6", 1)[1].split("\n", 1)[1]
