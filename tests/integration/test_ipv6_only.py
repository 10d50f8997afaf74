"""IPv6-only overlays (EnableIPv4 false) on etcd: 2 vxland nodes and a kernel node with
flannel-v6.<VNI> alone, as flannel v0.28.9 runs one (no IPv4 device, lease key
``0.0.0.0-0&<IPv6 subnet>``, PublicIP 0.0.0.0, BackendV6Data alone)."""

from __future__ import annotations

import json
import re
import sys

import pytest

from tests.integration.helpers import MB, transfer
from vxlan.lab import Lab, sh

KEY = re.compile(r"^/coreos\.com/network/subnets/0\.0\.0\.0-0&fd07:0:0:[0-9a-f]{1,4}::-64$")


def leases(lab: Lab) -> dict[str, dict]:
    lines = lab.etcdctl("get", "--prefix", "/coreos.com/network/subnets").stdout.splitlines()
    return {k: json.loads(v) for k, v in zip(lines[::2], lines[1::2], strict=True)}


@pytest.mark.parametrize("mode", ["offloads-on", "offloads-off"])
def test_ipv6_only_cluster(kernel_vxlan, mode):
    """Every pair of pods reaches every other over IPv6 (56 bytes, and 1430 with DF: flannel-v6's
    MTU), 50 MB of TCP arrive intact vxland <-> vxland and vxland <-> kernel, with the kernel
    node's offloads on and off; no node has anything of IPv4 in the overlay."""
    with Lab(["vxland", "vxland", "kernel"], ipv6_only=True, registry="etcd",
             kernel_tx_off=mode == "offloads-off") as lab:
        h1, h2, h3 = lab.hosts
        got = leases(lab)
        assert len(got) == 3 and all(KEY.match(k) for k in got), got
        for host in lab.hosts:
            value = got[f"/coreos.com/network/subnets/0.0.0.0-0&{host.subnet6.network_address}-64"]
            assert list(value) == ["PublicIP", "PublicIPv6", "BackendType", "BackendV6Data"], value
            assert value["PublicIP"] == "0.0.0.0" and value["PublicIPv6"] == host.public_ipv6
            env = host.subnet_file.read_text()
            assert "FLANNEL_SUBNET" not in env and "FLANNEL_NETWORK" not in env
            assert f"FLANNEL_IPV6_SUBNET={host.subnet6.network_address + 1}/64" in env
        started = next(ln for ln in lab.log(h1).splitlines() if "vxland started" in ln)
        assert "subnet none (IPv6-only)" in started and f"IPv6 subnet {h1.subnet6}" in started, started
        assert f"underlay eth0 {h1.public_ipv6}, public IP none" in started, started
        # the TUN: no IPv4 address or route; the kernel node: flannel-v6.1 alone
        assert "inet " not in sh(["ip", "addr", "show", "flannel.1"], ns=h1.ns).stdout
        assert "flannel.1" not in sh(["ip", "-4", "route"], ns=h1.ns).stdout
        assert "flannel.1" not in sh(["ip", "link"], ns=h3.ns).stdout
        # no IPv4 socket on the VXLAN port
        assert f"0.0.0.0:{lab.port}" not in sh(["ss", "-uan"], ns=h1.ns).stdout
        assert f"{h1.public_ip}:{lab.port}" not in sh(["ss", "-uan"], ns=h1.ns).stdout
        for src in lab.hosts:
            for dst in lab.hosts:
                if src is not dst:
                    for size, df in ((56, False), (1430 - 48, True)):
                        ok = lab.ping(src, dst, count=1, size=size, dont_fragment=df, ipv6=True).returncode == 0
                        assert ok, f"h{src.index}->h{dst.index} {size} bytes\n{lab.log(src)[-1500:]}"
        for src, dst in ((h1, h2), (h2, h1), (h1, h3), (h3, h1)):
            sent, received = transfer(lab, src, dst, 50 * MB, ipv6=True)
            assert sent == received, f"h{src.index} -> h{dst.index}"
        metrics = lab.metrics(h1)
        for reason in ("bad_inner_ip", "bad_outer", "bad_offload", "unknown_sender", "dst_mac_mismatch"):
            assert metrics[f'vxland_drops_total{{reason="{reason}"}}'] == 0, reason


def test_a_restarted_node_keeps_its_lease():
    """Each IPv6-only node finds its own lease again by its PublicIPv6 (all say PublicIP
    0.0.0.0: flanneld's match by PublicIP would hand it another node's). --ip-blackhole-route
    covers the IPv6 subnet alone (main.go: AddBlackholeV6Route with EnableIPv6)."""
    with Lab(["vxland", "vxland"], ipv6_only=True, registry="etcd", env={"FLANNELD_IP_BLACKHOLE_ROUTE": "true"}) as lab:
        h1, h2 = lab.hosts
        assert f"blackhole {h1.subnet6}" in sh(["ip", "-6", "route", "show", "type", "blackhole"], ns=h1.ns).stdout
        assert "blackhole" not in sh(["ip", "-4", "route", "show", "type", "blackhole"], ns=h1.ns).stdout
        before = sorted(leases(lab))
        h2_subnet6 = h2.subnet6
        assert lab.stop_vxland(h2) == 0
        lab.start_node(h2)
        assert h2.subnet6 == h2_subnet6 and sorted(leases(lab)) == before
        assert lab.ping(h1, h2, count=1, ipv6=True).returncode == 0
        # vxlanctl doctor beside it: the config and the port it holds (over IPv6 alone)
        doctor = sh([sys.executable, "-m", "vxlan.ctl", "doctor", "--etcd-endpoints", lab.etcd_endpoints,
                     "--iface", "eth0"], ns=h1.ns, check=False).stdout
        assert "ok   config       IPv6-only (EnableIPv4 false), backend vxlan" in doctor, doctor
        assert f"UDP {lab.port} is held by the running vxland" in doctor, doctor


@pytest.mark.parametrize("api", ["v3", "v2"])
def test_a_node_whose_underlay_has_no_ipv4(api):
    """An IPv6-only host: no IPv4 address on its underlay (--iface eth0 all the same), etcd
    reached over IPv6; it joins and its pod reaches the other node's, on either etcd store."""
    with Lab(["vxland", "vxland"], ipv6_only=True, registry="etcd", etcd_api=api, defer=(2,)) as lab:
        h1, h2 = lab.hosts
        sh(["ip", "-4", "addr", "flush", "dev", "eth0"], ns=h2.ns)
        h2.extra_args = ["--etcd-endpoints", lab.etcd_endpoints6]
        lab.start_node(h2)
        started = next(ln for ln in lab.log(h2).splitlines() if "vxland started" in ln)
        assert f"underlay eth0 {h2.public_ipv6}, public IP none" in started, started
        for src, dst in ((h1, h2), (h2, h1)):
            assert lab.ping(src, dst, count=2, interval=0.1, ipv6=True).returncode == 0
        sent, received = transfer(lab, h2, h1, 5 * MB, ipv6=True)
        assert sent == received
        # without --iface: the interface of the IPv6 default route, as flanneld takes it
        sh(["ip", "-6", "route", "add", "default", "dev", "eth0"], ns=h2.ns)
        found = sh([sys.executable, "-c", "from vxlan import netconf; i = netconf.find_iface(ipv6_only=True); "
                    "print(i.name, repr(i.address))"], ns=h2.ns).stdout
        assert found == "eth0 ''\n", found
