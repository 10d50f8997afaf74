"""systemd's file-descriptor store (issue #16, item 2), with a stand-in for systemd: vxland
hands its TUN and sockets to the store at READY (FDSTORE=1, FDNAME=...), dies by kill -9, and
the next start gets them back (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID) as systemd's
Restart=on-failure or systemctl restart would give them. Real systemd does not run here."""

from __future__ import annotations

import re
import subprocess
import time

from vxlan.lab import Lab, sh
from vxlan.lab.systemd import FdStore


def test_kill_9_under_systemd_keeps_the_tun_and_loses_nothing(tmp_path):
    """vxland stores its TUN and sockets at READY; killed with -9 and started again with them
    0.3 s later (as Restart= would), a ping every 10 ms through it loses nothing, and the
    first answers come back within a second of the restart."""
    with Lab(["vxland", "vxland"], registry="etcd", defer=(1,)) as lab:
        h1, h2 = lab.hosts
        store = FdStore(lab.workdir / "notify.sock")
        lab.env["NOTIFY_SOCKET"] = str(store.path)
        cmd, _ = lab._node_cmd(h1)
        lab.start_node(h1)
        del lab.env["NOTIFY_SOCKET"]
        stored = store.receive()
        try:
            assert {"tun", "udp", "packet"} <= set(stored), stored
            ping = lab.popen(h1.pod_ns, ["ping", "-D", "-i", "0.01", "-c", "300", h2.pod_ip],
                             stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            h1.proc.kill()  # kill -9: nothing of vxland runs
            h1.proc.wait(5)
            # the store holds the TUN: the device, its address and route stay; packets queue on it
            assert "flannel.1" in sh(["ip", "link", "show", "flannel.1"], ns=h1.ns).stdout
            time.sleep(0.3)
            offset = h1.log_path.stat().st_size
            restarted = time.time()
            h1.proc = store.start(lab, h1, cmd, h1.log_path)
            lab.wait_started(h1, offset, 20)
            log_text = h1.log_path.read_text()[offset:]
            assert re.search(r"restart: systemd's file-descriptor store gave back .*\btun\b", log_text), log_text
            out, _ = ping.communicate(timeout=30)
        finally:
            store.close()
        replies = {int(m[2]): float(m[1]) for m in re.finditer(r"^\[([\d.]+)\].*icmp_seq=(\d+)", out, re.M)}
        # none lost: while vxland was dead the store kept the TUN (its queue held the pod's
        # requests) and the packet socket (the answers); without the store 38 of 300 were lost
        assert len(replies) == 300, sorted(set(range(1, 301)) - set(replies))
        # and traffic was back within a second of the restart
        after = sorted(at for at in replies.values() if at >= restarted)
        assert after and after[0] - restarted < 1.0, (after[:3], restarted)
