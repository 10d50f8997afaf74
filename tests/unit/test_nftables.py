"""EnableNFTables: the config flag and the nft transaction vxland writes (flannel v0.28.9's
pkg/trafficmngr/nftables), without root."""

from __future__ import annotations

import ipaddress

import pytest

from vxlan import nftables
from vxlan.config import ConfigError, parse_config

NETWORK, SUBNET = ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.3.0/24")


def test_config_flag_defaults_off_and_is_a_boolean():
    base = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}
    assert parse_config(base).enable_nftables is False
    assert parse_config({**base, "EnableNFTables": True}).enable_nftables is True
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "EnableNFTables": "yes"})
    assert err.value.field == "EnableNFTables" and "true or false" in str(err.value)


def test_the_transaction_has_both_tables_then_each_chain_flushed_then_its_rules():
    text = nftables.script(NETWORK, SUBNET, masq=True, forward=True, random_fully=False)
    lines = text.splitlines()
    assert lines[:2] == ['add table ip flannel-ipv4 { comment "rules for flannel-ipv4" ; }',
                         'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }']
    assert lines[3] == "flush chain ip flannel-ipv4 postrtg" and "flush chain ip flannel-ipv4 forward" in lines
    assert "add rule ip flannel-ipv4 postrtg ip saddr != 10.5.3.0/24 ip daddr 10.5.0.0/16 return" in lines
    assert "add rule ip flannel-ipv4 postrtg ip saddr 10.5.0.0/16 ip daddr != 224.0.0.0/4 masquerade" in lines
    assert "fully-random" not in text
    assert "fully-random" in nftables.script(NETWORK, SUBNET, True, False, random_fully=True)
    only_forward = nftables.script(NETWORK, SUBNET, masq=False, forward=True, random_fully=True)
    assert "postrtg" not in only_forward and "forward" in only_forward


LISTING = """table ip flannel-ipv4 { # handle 7
\tcomment "rules for flannel-ipv4"
\tchain postrtg { # handle 1
\t\tcomment "chain to manage traffic masquerading by flannel"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return # handle 3
\t\tip saddr 10.5.3.0/24 ip daddr 10.5.0.0/16 return # handle 4
\t}
}
"""


def test_listing_rules_leave_out_headers_comments_and_handles():
    assert nftables.rules_of_listing(LISTING) == ["meta mark 0x00004000 return",
                                                  "ip saddr 10.5.3.0/24 ip daddr 10.5.0.0/16 return"]


def test_expected_rules_are_what_nft_prints_in_main_go_order():
    rules = nftables.expected_rules(NETWORK, SUBNET, masq=True, forward=True, random_fully=True)
    assert rules[0] == "meta mark 0x00004000 return" and len(rules) == 8
    assert rules[-2:] == ["ip saddr 10.5.0.0/16 accept", "ip daddr 10.5.0.0/16 accept"]
    assert rules[-3] == "ip saddr != 10.5.0.0/16 ip daddr 10.5.0.0/16 masquerade fully-random"


def test_cleanup_never_fails_on_a_missing_table():
    # add-then-delete: the transaction succeeds whether or not the table was there
    assert nftables.cleanup_script() == ("add table ip flannel-ipv4\ndelete table ip flannel-ipv4\n"
                                         "add table ip6 flannel-ipv6\ndelete table ip6 flannel-ipv6\n")
