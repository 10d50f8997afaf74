"""Pure parts of the v2 era work: which store holds the config, how etcd v2 error answers are
read, flanneld <= 0.19's rules, and the commands ``vxlanctl plan`` prints."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from vxlan import iptables, plan
from vxlan.cli import etcd_settings, vxlanctl_parser
from vxlan.config import parse_config
from vxlan.lease import Lease
from vxlan.registry import RegistryError
from vxlan.registry.etcd_v2 import EtcdV2Store
from vxlan.registry.select import ConfigProbe, choose_api
from vxlan.registry.store import ApiMissing, Compacted, EtcdError, EtcdUnavailable, parse_endpoints

NET = ipaddress.IPv4Network("172.7.0.0/16")


def lease(n: int, backend: str = "vxlan", ip: str | None = None) -> Lease:
    return Lease(ipaddress.IPv4Network(f"172.7.{n}.0/24"), ip or f"198.18.0.{n}", backend,
                 bytes([2, 0, 0, 0, 0, n]) if backend == "vxlan" else None, 1 if backend == "vxlan" else None)


def test_choose_api_prefers_v3_and_refuses_both():
    key = "/coreos.com/network/config"
    assert choose_api(ConfigProbe({"v2": b"{}"}, {"v3": ""}, {}), key) == "v2"
    assert choose_api(ConfigProbe({"v3": b"{}"}, {"v2": "off"}, {}), key) == "v3"
    assert choose_api(ConfigProbe({}, {"v3": "", "v2": ""}, {}), key) is None
    with pytest.raises(RegistryError) as info:
        choose_api(ConfigProbe({"v3": b'{"Network":"10.1.0.0/16"}', "v2": b'{"Network":"10.2.0.0/16"}'}, {}, {}), key)
    assert "10.1.0.0/16" in str(info.value) and "10.2.0.0/16" in str(info.value)


@pytest.mark.parametrize("status,body,kind,text", [
    (404, b"404 page not found\n", ApiMissing, "--enable-v2=true"),
    (400, b'{"errorCode":401,"message":"The event in requested index is outdated and cleared","cause":"x",'
          b'"index":2007}', Compacted, "outdated and cleared"),
    (401, b'{"errorCode":110,"message":"The request requires user authentication"}', EtcdError,
     "--etcd-username"),
    (500, b'{"errorCode":300,"message":"Raft Internal Error"}', EtcdUnavailable, "Raft Internal Error"),
    (503, b"unavailable", EtcdUnavailable, "HTTP 503"),
    (403, b'{"errorCode":102,"message":"Not a file","cause":"/coreos.com/network"}', EtcdError, "Not a file"),
])
def test_v2_error_answers(status, body, kind, text):
    error = EtcdV2Store(parse_endpoints("http://127.0.0.1:2379"))._error(status, body)
    assert type(error) is kind and text in str(error)
    if kind is Compacted:
        assert error.revision == 2007


def test_legacy_rules_cover_every_variant_flanneld_wrote():
    rules = iptables.legacy_rules(NET, ipaddress.IPv4Network("172.7.9.0/24"))
    lines = {r.line() for r in rules}
    assert len(rules) == len(lines) == 16  # 12 masquerade (comment x random-fully), 4 forward
    assert '-A POSTROUTING -s 172.7.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE ' \
           '--random-fully' in lines  # v0.17.0 network/iptables.go
    assert "-A POSTROUTING ! -s 172.7.0.0/16 -d 172.7.9.0/24 -j RETURN" in lines  # v0.10: no comment
    assert {r.chain for r in rules} == {"POSTROUTING", "FORWARD"}


def build(backend: dict, peers, direct=(), missing=None) -> plan.Plan:
    config = parse_config({"Network": str(NET), "Backend": backend})
    own = lease(1, config.backend.type if config.backend.type != "udp" else "")
    return plan.build(config, own, [own, *peers], "eth0", 1500, set(direct), Path("/run/flannel/subnet.env"),
                      kernel_vxlan=missing)


def test_plan_vxlan_is_flannels_order():
    p = build({"Type": "vxlan", "VNI": 7, "Port": 4789}, [lease(2), lease(3, "host-gw")])
    cmds = [" ".join(s.cmd) for s in p.steps]
    assert cmds[0] == "ip link add flannel.7 address 02:00:00:00:00:01 type vxlan id 7 local 198.18.0.1 dev eth0 " \
                      "dstport 4789 nolearning"
    assert cmds[1:4] == ["ip link set flannel.7 mtu 1450", "ip addr replace 172.7.1.0/32 dev flannel.7",
                         "ip link set flannel.7 up"]
    # neighbour, fdb, then the route (vxlan_network.go:handleSubnetEvents)
    assert cmds[4:7] == ["ip neigh replace 172.7.2.0 lladdr 02:00:00:00:00:02 dev flannel.7 nud permanent",
                         "bridge fdb replace 02:00:00:00:00:02 dev flannel.7 dst 198.18.0.2 self permanent",
                         "ip route replace 172.7.2.0/24 via 172.7.2.0 dev flannel.7 onlink"]
    assert any("172.7.3.0-24" in n and "host-gw" in n for n in p.notes)
    assert p.steps[-1].stdin == "FLANNEL_NETWORK=172.7.0.0/16\nFLANNEL_SUBNET=172.7.1.1/24\nFLANNEL_MTU=1450\n" \
                                "FLANNEL_IPMASQ=false\n"
    script = p.render_sh()
    assert script.startswith("#!/bin/sh\n") and "ip link show flannel.7 >/dev/null 2>&1 || ip link add" in script
    assert json.loads(p.render_json())["steps"][0]["cmd"][:3] == ["ip", "link", "add"]


def test_plan_direct_routing_host_gw_and_udp():
    p = build({"Type": "vxlan", "DirectRouting": True}, [lease(2), lease(3)], direct=[lease(2).subnet])
    cmds = [" ".join(s.cmd) for s in p.steps]
    assert "ip route replace 172.7.2.0/24 via 198.18.0.2" in cmds  # on our segment: no tunnel
    assert "ip route replace 172.7.3.0/24 via 172.7.3.0 dev flannel.1 onlink" in cmds
    p = build({"Type": "host-gw"}, [lease(2, "host-gw"), lease(3)])
    cmds = [" ".join(s.cmd) for s in p.steps]
    assert "ip route replace 172.7.2.0/24 via 198.18.0.2 dev eth0" in cmds
    assert not any("flannel." in c or "172.7.3.0" in c for c in cmds)
    assert "FLANNEL_MTU=1500" in p.steps[-1].stdin
    p = build(None, [lease(2, "")])  # no Backend: udp
    assert any("udp backend" in n for n in p.notes) and not any(s.cmd[0] == "ip" for s in p.steps)
    p = build({"Type": "vxlan"}, [], missing="the kernel cannot create vxlan devices: Operation not supported")
    assert any("run vxland on this host instead" in n for n in p.notes)


def test_etcd_api_flag_and_env(monkeypatch):
    args = vxlanctl_parser().parse_args(["plan", "--etcd-api", "v2", "--format", "json"])
    assert etcd_settings(args).api == "v2" and args.format == "json"
    monkeypatch.setenv("FLANNELD_ETCD_API", "v3")
    assert etcd_settings(vxlanctl_parser().parse_args(["plan"])).api == "v3"
    with pytest.raises(SystemExit):
        vxlanctl_parser().parse_args(["plan", "--etcd-api", "v4"])


def test_plan_dual_stack_adds_flannel_v6():
    """EnableIPv6: flannel-v6.<VNI> over the IPv6 underlay, each dual-stack peer's IPv6 half
    (neighbour, fdb, onlink route over IPv6), the ip6tables rules and subnet.env's IPv6 lines."""
    from vxlan.lease import LeaseV6

    config = parse_config({"Network": str(NET), "Backend": {"Type": "vxlan"}, "EnableIPv6": True,
                           "IPv6Network": "fd07::/48"})

    def dual(i: int) -> Lease:
        return Lease(ipaddress.IPv4Network(f"172.7.{i}.0/24"), f"198.18.0.{i}", "vxlan", bytes([2, 0, 0, 0, 0, i]), 1,
                     v6=LeaseV6(ipaddress.IPv6Network(f"fd07:0:0:{i}::/64"), f"fd00:c612::{i}",
                                bytes([2, 0, 0, 0, 6, i]), 1))

    own = dual(1)
    p = plan.build(config, own, [own, dual(2)], "eth0", 1500, set(), Path("/run/flannel/subnet.env"), ip_masq=True)
    cmds = [" ".join(s.cmd) for s in p.steps]
    assert "ip link add flannel-v6.1 address 02:00:00:00:06:01 mtu 1450 type vxlan id 1 local fd00:c612::1 dev eth0 " \
           "dstport 8472 nolearning" in cmds
    assert "ip -6 addr replace fd07:0:0:1::/128 dev flannel-v6.1 nodad" in cmds
    i = cmds.index("ip -6 neigh replace fd07:0:0:2:: lladdr 02:00:00:00:06:02 dev flannel-v6.1 nud permanent")
    assert cmds[i + 1:i + 3] == [
        "bridge fdb replace 02:00:00:00:06:02 dev flannel-v6.1 dst fd00:c612::2 self permanent",
        "ip -6 route replace fd07:0:0:2::/64 via fd07:0:0:2:: dev flannel-v6.1 onlink"]
    assert any(c.startswith("ip6tables -t nat -A FLANNEL-POSTRTG -s fd07::/48 ! -d ff00::/8") for c in cmds)
    assert "FLANNEL_IPV6_NETWORK=fd07::/48\nFLANNEL_IPV6_SUBNET=fd07:0:0:1::1/64\n" in p.steps[-1].stdin
