"""etcd faults with a running cluster, on both stores: an outage (30 s during a v2 long-poll
watch) and a member of a 3-member etcd going away. Kept apart from test_etcd.py because they
mostly wait, so a second test worker runs beside them."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from tests.integration.helpers import wait_for
from tests.integration.test_etcd import lease_value
from vxlan.lab import Lab


@pytest.mark.parametrize("api,outage_s", [("v3", 10), ("v2", 30)])
def test_etcd_outage_loses_no_packet_and_late_joiner_is_learned(api, outage_s):
    """etcd down (10 s on v3, 30 s during a v2 long-poll watch): forwarding to known peers loses
    nothing, and a node that joined meanwhile is learned within 2 s of etcd's return."""
    with Lab(["vxland", "vxland", "vxland"], registry="etcd", defer=(3,), etcd_api=api) as lab:
        v1, v2, v3 = lab.hosts
        interval_s = 0.005 if outage_s <= 10 else 0.01
        count = int((outage_s + 3) / interval_s)
        flood = lab.popen(v1.pod_ns, ["ping", "-n", "-q", "-i", str(interval_s), "-c", str(count), "-W", "1",
                                      v2.pod_ip], stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        lab.stop_etcd(lab.etcd[0])
        assert wait_for(lambda: lab.metrics(v1)["vxland_etcd_connected"] == 0, timeout=5)
        lab.start_node(v3, wait=False)  # joins while etcd is down: waits for it
        time.sleep(outage_s)
        assert v1.proc.poll() is None and lab.metrics(v1)["vxland_peers"] == 1
        lab.start_etcd(lab.etcd[0])  # returns once etcd answers
        learned = wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2, timeout=10)
        print(f"late joiner learned {learned} s after etcd answered again")
        assert learned is not None and learned < 6.0, f"learned after {learned}"  # contract: 2 s
        lab.wait_node(v3)
        out, _ = flood.communicate(timeout=outage_s + 30)
        assert re.search(rf"{count} packets transmitted, {count} received", out), out
        assert lab.ping(v3, v1, count=2).returncode == 0


def test_member_failover_keeps_watch_and_renewal(api):
    """3-member etcd, every member in --etcd-endpoints; vxland talks to the first. Stop it."""
    env = {"VXLAND_LEASE_TTL_S": "62"}  # with the 1-minute margin: renew every ~2 s
    with Lab(["vxland", "vxland"], registry="etcd", etcd_members=3, env=env, etcd_api=api) as lab:
        for host in lab.hosts:
            lab.stop_vxland(host)
            host.extra_args = ["--subnet-lease-renew-margin", "1"]
            lab.start_node(host)
        v1 = lab.hosts[0]
        assert wait_for(lambda: lab.metrics(v1)["vxland_lease_renewals_total"] >= 1, timeout=5)
        lab.stop_etcd(lab.etcd[0])
        stopped = time.monotonic()
        lab.put_lease("172.7.210.0-24", lease_value("198.18.0.99", "0e:00:00:00:00:09"),
                      endpoints=",".join(m.client_url for m in lab.etcd[1:]))
        assert wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2, timeout=6.0), lab.log(v1)[-2000:]
        print(f"member stopped -> new lease learned via another member: {time.monotonic() - stopped:.2f} s")
        renewals = lab.metrics(v1)["vxland_lease_renewals_total"]
        assert wait_for(lambda: lab.metrics(v1)["vxland_lease_renewals_total"] > renewals, timeout=5)
        assert lab.ping(v1, lab.hosts[1], count=2).returncode == 0
