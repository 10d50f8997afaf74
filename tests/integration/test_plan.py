"""``vxlanctl plan``: the commands it prints for each backend, applied by hand on fresh lab
hosts that run no flanneld and no vxland (kernel vxlan devices for the vxlan backend), give
every pod a path to every pod."""

from __future__ import annotations

import ipaddress
import json
import sys

import pytest

from vxlan import wire
from vxlan.lab import Lab, sh

CASES = {
    "vxlan-file": ({"Type": "vxlan"}, "file", "v3"),
    "host-gw-etcd-v2": ({"Type": "host-gw"}, "etcd", "v2"),
    "vxlan-directrouting-etcd-v3": ({"Type": "vxlan", "DirectRouting": True}, "etcd", "v3"),
}


def plan(lab: Lab, host, *extra: str):
    source = ["--registry-file", str(lab.registry_path)] if lab.registry == "file" else \
        ["--etcd-endpoints", lab.etcd_endpoints]
    return sh([sys.executable, "-m", "vxlan.ctl", "plan", *source, "--iface", "eth0", "--subnet-file",
               str(host.subnet_file), *extra], ns=host.ns, check=False)


@pytest.mark.parametrize("case", CASES)
def test_plan_applied_by_hand_connects_every_pod(case, kernel_vxlan):
    backend, registry, api = CASES[case]
    with Lab(["plain", "plain", "plain"], registry=registry, etcd_api=api, backend=backend) as lab:
        if registry == "etcd":  # reservations, as an operator would write them
            for i, h in enumerate(lab.hosts, start=1):
                h.subnet, h.vtep_mac = ipaddress.IPv4Network(f"172.7.{10 + i}.0/24"), wire.random_vtep_mac()
                lab.put_lease(f"172.7.{10 + i}.0-24", json.dumps(h.lease_json(1, backend["Type"])))
                lab._address_pod(h)
        h1, h2, h3 = lab.hosts
        for h in (h1, h2):  # the printed script, run by hand
            proc = plan(lab, h)
            assert proc.returncode == 0, proc.stderr
            script = proc.stdout
            assert f"subnet {h.subnet}" in script
            if backend == {"Type": "vxlan"}:
                assert "bridge fdb replace" in script and "ip neigh replace" in script and "onlink" in script
            else:  # host-gw, or DirectRouting on one segment: plain routes
                assert "bridge fdb" not in script and f"{h3.subnet} via {h3.public_ip}" in script
            if backend["Type"] == "vxlan":
                assert f"address {wire.mac_to_str(h.vtep_mac)} type vxlan id 1" in script
            assert "FLANNEL_SUBNET=" in script and "iptables -t filter -A FLANNEL-FWD" in script
            sh(["sh", "-e"], ns=h.ns, input=script)
            sh(["sh", "-e"], ns=h.ns, input=script)  # twice: nothing doubled, nothing fails
        applied = plan(lab, h3, "--apply", "--format", "json")  # the third with --apply
        assert applied.returncode == 0, applied.stderr
        doc, _ = json.JSONDecoder().raw_decode(applied.stdout)
        assert doc["backend"] == backend["Type"] and doc["subnet"] == str(h3.subnet)
        for src in lab.hosts:
            for dst in lab.hosts:
                if src is not dst:
                    assert lab.ping(src, dst, count=2).returncode == 0, f"h{src.index}->h{dst.index}"
        for h in lab.hosts:
            assert f"FLANNEL_SUBNET={h.subnet.network_address + 1}/24" in h.subnet_file.read_text()
            rules = sh(["iptables-save", "-t", "filter"], ns=h.ns).stdout
            assert rules.count("-j FLANNEL-FWD") == 1, rules


def test_plan_without_a_lease_or_config_says_what_to_do():
    with Lab(["plain"], registry="etcd", etcd_api="v2", seed_config=False) as lab:
        h = lab.hosts[0]
        proc = plan(lab, h)
        assert proc.returncode == 1 and "no network config at /coreos.com/network/config" in proc.stderr
        assert "ETCDCTL_API=2 etcdctl set" in proc.stderr, proc.stderr
        lab.put_config()
        proc = plan(lab, h)
        assert proc.returncode == 1 and f"no lease in etcd v2 has PublicIP {h.public_ip}" in proc.stderr, proc.stderr


def test_dual_stack_plan_applied_by_hand_connects_every_pod_over_both_families(kernel_vxlan):
    """EnableIPv6: the printed commands make flannel.1 and flannel-v6.1 as flanneld does, and
    every pod reaches every other over IPv4 and IPv6 (full-size DF: 1450 and 1430 bytes)."""
    with Lab(["plain", "plain"], registry="etcd", ipv6=True) as lab:
        for i, h in enumerate(lab.hosts, start=1):  # reservations, dual-stack, as an operator writes them
            h.subnet, h.vtep_mac = ipaddress.IPv4Network(f"172.7.{10 + i}.0/24"), wire.random_vtep_mac()
            h.subnet6 = ipaddress.IPv6Network(f"fd07:0:0:{10 + i}::/64")
            value = {**h.lease_json(1), "PublicIPv6": h.public_ipv6,
                     "BackendV6Data": {"VNI": 1, "VtepMAC": wire.mac_to_str(wire.random_vtep_mac())}}
            lab.put_lease(f"172.7.{10 + i}.0-24&fd07:0:0:{10 + i}::-64", json.dumps(value))
            lab._address_pod(h)
        for h in lab.hosts:
            proc = plan(lab, h)
            assert proc.returncode == 0, proc.stderr
            assert "flannel-v6.1" in proc.stdout and "ip6tables -t filter -A FLANNEL-FWD" in proc.stdout
            assert f"FLANNEL_IPV6_SUBNET={h.subnet6.network_address + 1}/64" in proc.stdout
            sh(["sh", "-e"], ns=h.ns, input=proc.stdout)
            sh(["sh", "-e"], ns=h.ns, input=proc.stdout)  # twice: nothing doubled, nothing fails
        assert "mtu 1430" in sh(["ip", "link", "show", "flannel-v6.1"], ns=lab.hosts[0].ns).stdout
        h1, h2 = lab.hosts
        for src, dst in ((h1, h2), (h2, h1)):
            assert lab.ping(src, dst, count=1, size=1422, dont_fragment=True).returncode == 0
            assert lab.ping(src, dst, count=1, size=1382, dont_fragment=True, ipv6=True).returncode == 0
