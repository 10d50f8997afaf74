"""Capture on a running daemon: --capture files, SIGUSR1, /debug/capture, and its access rule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import bind_layers
from scapy.utils import PcapNgReader

from tests.integration.helpers import MB, transfer, wait_for
from vxlan import wire
from vxlan.lab import Lab, sh

bind_layers(UDP, VXLAN, dport=8472)

SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 8472))
"""

FETCH = """
import sys, urllib.error, urllib.request
try:
    data = urllib.request.urlopen(sys.argv[1], timeout=30).read()
except urllib.error.HTTPError as exc:
    print(exc.code); sys.exit(0)
open(sys.argv[2], "wb").write(data); print(200)
"""

pytestmark = pytest.mark.offload  # make test runs this module with offloads on and off


def read(path):
    with PcapNgReader(str(path)) as reader:
        return [(p.sniffed_on, p.direction, getattr(p, "comments", None), IP(bytes(p))) for p in reader]


def check_tso_records(pkts):
    """The sender's records of a bulk TCP transfer: every segment sent carries a valid inner TCP
    checksum, and each super-packet read from the TUN (recorded up to the snap length, as read,
    pieces and all) holds the bytes its segments carried."""
    sent = {}
    for iface, direction, _, p in pkts:
        if iface == "underlay" and direction == 2 and VXLAN in p and TCP in p[VXLAN]:
            inner = p[VXLAN][IP]
            fresh = inner.copy()
            del fresh[TCP].chksum
            assert IP(bytes(fresh))[TCP].chksum == inner[TCP].chksum
            sent[inner[TCP].seq] = bytes(inner[TCP].payload)
    supers = [p for iface, direction, _, p in pkts if iface == "overlay" and direction == 2 and TCP in p
              and p.len > 1500]
    assert sent
    # FLANNELD_NO_OFFLOAD=1 (make test's second pass): no TSO, so no super-packets to check
    assert bool(supers) == (os.environ.get("FLANNELD_NO_OFFLOAD") != "1")
    for p in supers:
        captured = bytes(p[TCP].payload)  # cut at the snap length
        joined, seq = b"", p[TCP].seq
        while len(joined) < len(captured) and seq in sent:
            joined += sent[seq]
            seq = (seq + len(sent[seq])) & 0xFFFFFFFF
        assert joined[:len(captured)] == captured


def test_capture_file_with_both_interfaces_both_directions_and_drops():
    with Lab(["vxland", "vxland", "plain"]) as lab:
        v1, v2, plain = lab.hosts
        path = lab.workdir / "cap.pcapng"
        lab.stop_vxland(v1)
        v1.extra_args = ["--capture", str(path)]
        lab.start_node(v1)
        assert lab.ping(v2, v1, count=3).returncode == 0
        sent, received = transfer(lab, v1, v2, 2 * MB)
        assert received == sent
        bad = bytes(VXLAN(vni=lab.vni + 5) / Ether(dst=wire.mac_to_str(v1.vtep_mac), src="02:00:00:00:00:99")
                    / IP(src=plain.pod_ip, dst=v1.pod_ip) / ICMP())
        sh([sys.executable, "-c", SEND, plain.public_ip, v1.public_ip, bad.hex()], ns=plain.ns)
        time.sleep(0.3)
        assert lab.stop_vxland(v1) == 0  # SIGTERM in the middle of the capture
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        pkts = read(path)
        seen = {(iface, direction) for iface, direction, _, _ in pkts}
        assert seen == {("underlay", 1), ("underlay", 2), ("overlay", 1), ("overlay", 2)}
        vnis = {p[VXLAN].vni for iface, _, _, p in pkts if iface == "underlay" and VXLAN in p}
        assert vnis == {lab.vni, lab.vni + 5}
        assert any(ICMP in p[VXLAN] for iface, _, _, p in pkts if iface == "underlay" and VXLAN in p)
        assert any(TCP in p for iface, _, _, p in pkts if iface == "overlay")
        drops = [c for _, _, c, p in pkts if c]
        assert drops == [[b"drop: wrong_vni"]]
        check_tso_records(pkts)
        out = subprocess.run(["tshark", "-r", str(path), "-d", "udp.port==8472,vxlan", "-Y", "vxlan && icmp",
                              "-T", "fields", "-e", "vxlan.vni"], capture_output=True, text=True, check=True).stdout
        assert str(lab.vni) in out.split()


def test_sigusr1_toggles_and_bad_path_is_refused():
    with Lab(["vxland", "vxland"]) as lab:
        v1, v2 = lab.hosts
        path = lab.workdir / "toggle.pcapng"
        lab.stop_vxland(v1)
        v1.extra_args = ["--capture", str(path), "--capture-filter", "proto=icmp"]
        lab.start_node(v1)
        lab.ping(v2, v1, count=2)
        v1.proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: "capture off:" in lab.log(v1))
        first = read(path)
        assert first and all(ICMP in p for _, _, _, p in first)  # the filter kept ICMP only
        v1.proc.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: "capture on: writing" in lab.log(v1) and path.with_name(path.name + ".c1").exists())
        assert lab.ping(v2, v1, count=2).returncode == 0  # forwarding never stopped
        assert lab.stop_vxland(v1) == 0
        assert len(read(path.with_name(path.name + ".c1"))) >= 4
        # An unwritable path is a clear error at start.
        v1.extra_args = ["--capture", "/nonexistent/dir/x.pcapng"]
        lab.start_node(v1, wait=False)
        assert v1.proc.wait(10) == 1
        assert "--capture /nonexistent/dir/x.pcapng: No such file or directory" in lab.log(v1)


def test_debug_capture_endpoint_streams_and_refuses_strangers():
    with Lab(["vxland", "vxland"]) as lab:
        v1, v2 = lab.hosts
        pinger = lab.popen(v2.pod_ns, ["ping", "-n", "-i", "0.05", "-c", "80", v1.pod_ip], stdout=subprocess.DEVNULL)
        out = lab.workdir / "http.pcapng"
        url = f"http://127.0.0.1:{lab.healthz_port}/debug/capture?seconds=2"
        start = time.monotonic()
        code = sh([sys.executable, "-c", FETCH, url, str(out)], ns=v1.ns).stdout.strip()
        assert code == "200" and 1.5 < time.monotonic() - start < 10
        pkts = read(out)
        assert {iface for iface, _, _, _ in pkts} == {"underlay", "overlay"}
        assert sum(1 for iface, _, _, p in pkts if iface == "overlay" and ICMP in p) >= 20
        # From another namespace's address: forbidden.
        stranger = f"http://{v1.public_ip}:{lab.healthz_port}/debug/capture?seconds=1"
        code = sh([sys.executable, "-c", FETCH, stranger, str(lab.workdir / "x")], ns=v2.ns).stdout.strip()
        assert code == "403"
        bad = sh([sys.executable, "-c", FETCH, url.replace("seconds=2", "seconds=-1"), str(lab.workdir / "y")],
                 ns=v1.ns).stdout.strip()
        assert bad == "400"
        pinger.wait(10)
        assert lab.metrics(v1)['vxland_drops_total{reason="send_failed"}'] == 0


def test_trace_lines_on_stderr_rate_limited():
    with Lab(["vxland", "vxland"]) as lab:
        v1, v2 = lab.hosts
        lab.stop_vxland(v1)
        v1.extra_args = ["--trace", "--trace-rate", "5"]
        lab.start_node(v1)
        assert lab.ping(v2, v1, count=20, interval=0.01).returncode == 0
        assert wait_for(lambda: "lines suppressed (limit 5/s)" in lab.log(v1) or
                        lab.log(v1).count("trace ") >= 5, timeout=5)
        log = lab.log(v1)
        assert f"trace in  underlay peer {v2.public_ip} icmp {v2.pod_ip} > {v1.pod_ip}" in log
        assert log.count("\ntrace ") <= 5 + 5  # two seconds at most: the limit holds
