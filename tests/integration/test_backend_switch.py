"""Switching the backend of a flannel cluster of the etcd v2 era as operators do it: delete the
config, write the next one (``etcdctl rm`` / ``etcdctl set``), restart every node. Two vxland
nodes and a kernel node run by the flanneld emulator (v2 only, as flanneld <= 0.17);
host-gw -> vxlan -> vxlan with DirectRouting, each step with every pod reaching every pod."""

from __future__ import annotations

import json

from tests.integration.helpers import MB, transfer
from tests.integration.test_flanneld_parity import expected_rules, iptables_save
from vxlan.lab import Lab, sh

STEPS = [{"Type": "host-gw"}, {"Type": "vxlan"}, {"Type": "vxlan", "DirectRouting": True}]


def all_pairs_reach(lab: Lab) -> None:
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is dst:
                continue
            for size, df in ((56, False), (1422, True)):  # 1422 + 28 = 1450 bytes, DF
                proc = lab.ping(src, dst, count=2, size=size, dont_fragment=df)
                assert proc.returncode == 0, f"h{src.index}->h{dst.index} {size} B\n{proc.stdout}\n" + \
                    lab.log(src)[-1500:]


def test_host_gw_to_vxlan_to_direct_routing_on_v2(kernel_vxlan):
    with Lab(["vxland", "vxland", "kernel"], registry="etcd", etcd_api="v2", backend=STEPS[0], defer=(1, 2)) as lab:
        v1, v2, k = lab.hosts
        for h in (v1, v2):  # with the rules flanneld would install, to see they are never doubled
            h.extra_args = ["--ip-masq", "--iptables-forward-rules=true"]
            lab.start_node(h)
        subnets = {h.index: h.subnet for h in lab.hosts}
        for step, backend in enumerate(STEPS):
            if step:
                lab.delete_config()
                lab.put_config({"Network": str(lab.network), "Backend": backend})
                for h in lab.hosts:  # supervisorctl restart, one node after the other
                    assert lab.stop_vxland(h) == 0
                    lab.start_node(h)
            assert {h.index: h.subnet for h in lab.hosts} == subnets, "a restarted node keeps its subnet"
            leases = lab.etcd_leases()
            assert len(leases) == 3 and {v["BackendType"] for v in leases.values()} == {backend["Type"]}, leases
            all_pairs_reach(lab)
            sent, received = transfer(lab, v1, k, 50 * MB, seed=step)
            assert received == sent, f"step {step} ({backend})"

            routes = sh(["ip", "route", "show"], ns=v1.ns).stdout
            peers = {p["subnet"]: p["via"] for p in json.loads(lab.http_get(v1, "/peers"))["peers"]}
            if backend == {"Type": "vxlan"}:
                # the host-gw routes of the previous run are gone: the tunnel carries the peers
                assert f"{v2.subnet} via" not in routes and f"{k.subnet} via" not in routes, routes
                assert set(peers.values()) == {"tunnel"}, peers
                assert "left by an earlier host-gw or DirectRouting run" in lab.log(v1)
                kroutes = sh(["ip", "route", "show"], ns=k.ns).stdout
                assert f"{v1.subnet} via {v1.subnet.network_address} dev flannel.1 onlink" in kroutes, kroutes
            else:  # host-gw, and DirectRouting on one segment: every peer by a plain route
                for peer in (v2, k):
                    assert f"{peer.subnet} via {peer.public_ip} dev eth0" in routes, routes
                assert set(peers.values()) == {"route"}, peers
            for h in (v1, v2):
                assert iptables_save(lab, h, {}) == expected_rules(str(lab.network), str(h.subnet))
