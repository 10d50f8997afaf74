"""Dual-stack clusters (flannel >= 0.15, EnableIPv6) on a real etcd: the lease keys and JSON
that flanneld writes, and kernel nodes programmed as flanneld programs flannel.<VNI> and
flannel-v6.<VNI> (the lab's emulator, on vxland's registry code) reaching each other's pods
over IPv4 and over IPv6 through the IPv6 underlay. vxland's own IPv6 data plane is not built
yet: a vxland node refuses such a config by name."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.helpers import MB, transfer
from vxlan.lab import Lab, LabError, sh

KEY = re.compile(r"^/coreos\.com/network/subnets/172\.7\.\d+\.0-24&fd07:0:0:[0-9a-f]{1,4}::-64$")


def leases(lab: Lab) -> dict[str, dict]:
    if lab.etcd_api == "v2":
        keys = lab.etcdctl("ls", "/coreos.com/network/subnets", api="v2").stdout.split()
        return {k: json.loads(lab.etcdctl("get", k, api="v2").stdout) for k in keys}
    lines = lab.etcdctl("get", "--prefix", "/coreos.com/network/subnets").stdout.splitlines()
    return {k: json.loads(v) for k, v in zip(lines[::2], lines[1::2], strict=True)}


@pytest.mark.parametrize("api", ["v3", "v2"])
def test_kernel_nodes_join_a_dual_stack_cluster(kernel_vxlan, api):
    with Lab(["kernel", "kernel", "kernel"], registry="etcd", ipv6=True, etcd_api=api) as lab:
        got = leases(lab)
        assert len(got) == 3 and all(KEY.match(k) for k in got), got
        for host in lab.hosts:
            key = f"/coreos.com/network/subnets/{host.subnet.network_address}-24&{host.subnet6.network_address}-64"
            value = got[key]
            # LeaseAttrs' field order (pkg/lease/lease.go), both backend data
            assert list(value) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]
            assert value["PublicIPv6"] == host.public_ipv6
            assert value["BackendData"]["VtepMAC"] != value["BackendV6Data"]["VtepMAC"]
            env = host.subnet_file.read_text()
            assert f"FLANNEL_IPV6_NETWORK=fd07::/48\nFLANNEL_IPV6_SUBNET={host.subnet6.network_address + 1}/64\n" \
                in env
        # flannel-v6.1: over the IPv6 underlay, the kernel's MTU for it (1500 - 70)
        link = sh(["ip", "-d", "link", "show", "flannel-v6.1"], ns=lab.hosts[0].ns).stdout
        assert "mtu 1430" in link and f"local {lab.hosts[0].public_ipv6}" in link
        for src in lab.hosts:
            for dst in lab.hosts:
                if src is not dst:
                    assert lab.ping(src, dst, count=1).returncode == 0
                    assert lab.ping(src, dst, count=1, ipv6=True).returncode == 0
                    # full size, DF: 1430 bytes of IPv6 (40 header, 8 ICMPv6)
                    assert lab.ping(src, dst, count=1, size=1430 - 48, dont_fragment=True, ipv6=True).returncode == 0
        if api == "v3":
            h1, h2 = lab.hosts[:2]
            sent, received = transfer(lab, h1, h2, 20 * MB, ipv6=True)
            assert sent == received


def test_vxland_refuses_a_dual_stack_config_by_name():
    with Lab(["vxland"], registry="etcd", ipv6=True, defer=(1,)) as lab:
        with pytest.raises(LabError, match="did not start"):
            lab.start_node(lab.hosts[0], wait_s=10)
        assert "EnableIPv6: IPv6 overlays are not supported by vxland's data plane yet" in lab.log(lab.hosts[0])
        assert lab.hosts[0].proc.wait(5) == 1
