"""The running daemon: crafted bad datagrams, registry edits, health, signals, pure-Python mode."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from tests.integration.helpers import wait_for
from vxlan import wire
from vxlan.lab import Lab, sh

# Sends hex-encoded datagrams from a bound address; runs inside a lab namespace.
SEND = """
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for hexdata in sys.argv[4:]:
    s.sendto(bytes.fromhex(hexdata), (dst, port))
"""


# A datagram with a wrong UDP checksum, then the first fragment (MF) of one; raw sockets, so the
# kernel neither fixes the checksum nor refuses the fragment.
SEND_BAD_OUTER = """
import socket, struct, sys
src, dst, port, vx = sys.argv[1], sys.argv[2], int(sys.argv[3]), bytes.fromhex(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
s.bind((src, 0))
s.sendto(struct.pack("!HHHH", 40000, port, 8 + len(vx), 0x1234) + vx, (dst, 0))
r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
udp = struct.pack("!HHHH", 40000, port, 8 + len(vx), 0) + vx
r.sendto(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 7, 0x2000, 64, 17, 0, socket.inet_aton(src),
                     socket.inet_aton(dst)) + udp, (dst, 0))
"""


@pytest.fixture(scope="module")
def trio():
    """Two vxland hosts and a plain host that holds a lease (a known VTEP) but runs no tunnel."""
    with Lab(["vxland", "vxland", "plain"]) as lab:
        yield lab


def test_healthz(trio):
    assert trio.http_get(trio.hosts[0], "/healthz") == "flanneld is running"


def crafted(lab, target, sender):
    """One datagram per DropReason case, built by scapy with explicit MACs."""
    own, peer = wire.mac_to_str(target.vtep_mac), wire.mac_to_str(sender.vtep_mac)
    ip = IP(src=sender.pod_ip, dst=target.pod_ip) / ICMP()

    def vx(inner, dst=own, vni=lab.vni, flags=0x08, ethertype=0x0800):
        return bytes(VXLAN(flags=flags, vni=vni) / Ether(dst=dst, src=peer, type=ethertype) / inner)

    good = vx(ip)
    return {
        "too_short": good[:15],
        "empty": b"",  # a zero-length datagram: too_short as well
        "no_i_flag": vx(ip, flags=0x00),
        "wrong_vni": vx(ip, vni=lab.vni + 1),
        "dst_mac_mismatch": vx(ip, dst="02:11:22:33:44:55"),
        "dst_mac_broadcast": vx(ip, dst="ff:ff:ff:ff:ff:ff"),
        "arp": vx(ARP(op=1, psrc=sender.tun_ip, pdst=target.tun_ip, hwsrc=peer), ethertype=0x0806),
        "bad_ethertype": vx(b"\x00" * 46, ethertype=0x88CC),
        "bad_inner_ip": vx(bytes(ip)[:10]),
        "too_big": vx(IP(src=sender.pod_ip, dst=target.pod_ip) / ICMP() / (b"x" * 1500)),
    }


def send(lab, host, src_ip, dst, datagrams):
    sh([sys.executable, "-c", SEND, src_ip, dst.public_ip, str(lab.port), *(d.hex() for d in datagrams)], ns=host.ns)


@pytest.mark.offload  # the receive path differs with UDP GRO: make test runs this with offloads on and off
def test_every_drop_reason_is_counted(trio):
    v1, v2, plain = trio.hosts
    before = trio.metrics(v1)
    cases = crafted(trio, v1, plain)
    for datagram in cases.values():  # one at a time: each case must land in its own counter
        send(trio, plain, plain.public_ip, v1, [datagram])
    # An address that holds no lease: every datagram from it is an unknown sender.
    sh(["ip", "addr", "add", "198.18.0.200/24", "dev", "eth0"], ns=plain.ns)
    # Checked after the VXLAN header itself, before the inner frame (wire.Codec._check's order).
    send(trio, plain, "198.18.0.200", v1, [cases["dst_mac_mismatch"], cases["arp"]])
    time.sleep(0.3)
    after = trio.metrics(v1)
    expected = {reason: 1 for reason in cases if reason != "empty"} | {"unknown_sender": 2, "too_short": 2}
    # An inner packet over the TUN MTU cannot fit a 1500-byte underlay unfragmented: the packet
    # socket (--underlay-rx auto) sees the outer fragments and counts the first (bad_outer); a
    # UDP socket gets the datagram reassembled (too_big, test_udp_socket_receive_counts_too_big).
    expected |= {"too_big": 0, "bad_outer": 1}
    for reason, n in expected.items():
        key = f'vxland_drops_total{{reason="{reason}"}}'
        assert after[key] - before[key] == n, reason
    assert v1.proc.poll() is None, "the daemon died"
    proc = trio.ping(v1, v2, count=3)  # and it still forwards
    assert proc.returncode == 0 and "3 received" in proc.stdout


def test_udp_socket_receive_counts_too_big():
    """--underlay-rx udp: the kernel reassembles the outer fragments, the inner packet is too big."""
    with Lab(["vxland", "plain"], env={"FLANNELD_UNDERLAY_RX": "udp"}) as lab:
        v1, plain = lab.hosts
        send(lab, plain, plain.public_ip, v1, [crafted(lab, v1, plain)["too_big"]])
        time.sleep(0.3)
        after = lab.metrics(v1)
        assert after['vxland_drops_total{reason="too_big"}'] == 1
        assert after['vxland_drops_total{reason="bad_outer"}'] == 0


def test_bad_outer_headers_are_counted(trio):
    """The packet socket sees frames before the kernel's IP and UDP layers: a wrong UDP checksum
    and an outer fragment are dropped there, and counted (bad_outer), where a UDP socket would
    never have been handed them."""
    v1, v2, plain = trio.hosts
    before = trio.metrics(v1)
    echo = bytes(VXLAN(flags=0x08, vni=trio.vni) / Ether(dst=wire.mac_to_str(v1.vtep_mac),
                 src=wire.mac_to_str(plain.vtep_mac)) / IP(src=plain.pod_ip, dst=v1.pod_ip) / ICMP())
    sh([sys.executable, "-c", SEND_BAD_OUTER, plain.public_ip, v1.public_ip, str(trio.port), echo.hex()], ns=plain.ns)
    time.sleep(0.3)
    after = trio.metrics(v1)
    key = 'vxland_drops_total{reason="bad_outer"}'
    assert after[key] - before[key] == 2
    assert after['vxland_packets_total{direction="rx"}'] == before['vxland_packets_total{direction="rx"}']
    assert trio.ping(v1, v2, count=2).returncode == 0


@pytest.mark.offload
def test_counters_add_up_to_the_packet(trio):
    """Per side, received = forwarded + the drops of that side's reasons, exactly; and the
    received counts are the packets sent, to the packet."""
    v1, v2, plain = trio.hosts
    before = trio.metrics(v1)
    cases = crafted(trio, v1, plain)
    echo = bytes(VXLAN(flags=0x08, vni=trio.vni) / Ether(dst=wire.mac_to_str(v1.vtep_mac),
                 src=wire.mac_to_str(plain.vtep_mac)) / IP(src=plain.pod_ip, dst=v1.pod_ip) / ICMP())
    send(trio, plain, plain.public_ip, v1, [echo] * 5)  # forwarded; v1's pod answers each (TUN side)
    for datagram in cases.values():
        send(trio, plain, plain.public_ip, v1, [datagram])
    assert trio.ping(v1, v2, count=3, interval=0.05).returncode == 0  # 3 out (TUN), 3 back (underlay)
    sh(["ping", "-c", "2", "-i", "0.05", "-W", "1", "172.7.200.1"], ns=v1.pod_ns, check=False)  # 2 no_route
    time.sleep(0.3)
    after = trio.metrics(v1)

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)
    for side, direction, sent in (("underlay", "rx", 5 + len(cases) + 3), ("tun", "tx", 5 + 3 + 2)):
        drops = sum(delta(f'vxland_drops_total{{reason="{r.label}"}}') for r in wire.DropReason
                    if r is not wire.DropReason.OK and r.side == side)
        received = delta(f'vxland_received_total{{side="{side}"}}')
        forwarded = delta(f'vxland_packets_total{{direction="{direction}"}}')
        assert received == forwarded + drops, (side, received, forwarded, drops)
        assert received == sent, (side, received, sent)


def test_sigusr1_without_capture_is_logged_not_fatal(trio):
    """Operators send SIGUSR1 to daemons (log rotation habits); its default action would end
    vxland and take the TUN with it."""
    v1, v2, _ = trio.hosts
    v1.proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: "SIGUSR1 ignored" in trio.log(v1), timeout=3)
    assert v1.proc.poll() is None
    assert trio.ping(v1, v2, count=2).returncode == 0


@pytest.mark.offload
def test_no_route_is_counted(trio):
    v1 = trio.hosts[0]
    before = trio.metrics(v1)['vxland_drops_total{reason="no_route"}']
    sh(["ping", "-c", "1", "-W", "1", "172.7.200.1"], ns=v1.pod_ns, check=False)
    assert trio.metrics(v1)['vxland_drops_total{reason="no_route"}'] == before + 1


def test_registry_edit_adds_and_removes_a_peer_without_loss():
    with Lab(["vxland", "vxland", "vxland"]) as lab:
        v1, v2, v3 = lab.hosts
        steady = lab.popen(v1.pod_ns, ["ping", "-n", "-i", "0.05", "-c", "100", "-W", "1", v2.pod_ip],
                           stdout=subprocess.PIPE, text=True)
        assert lab.ping(v1, v3, count=1).returncode == 0
        v3.registered = False
        lab.write_registry()
        assert wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 1), lab.log(v1)
        assert lab.ping(v1, v3, count=1, timeout_s=1).returncode != 0
        assert "peer 172.7.3.0/24 via 198.18.0.3 removed" in lab.log(v1)
        v3.registered = True
        lab.write_registry()
        assert wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2), lab.log(v1)
        assert lab.ping(v1, v3, count=2).returncode == 0
        out, _ = steady.communicate(timeout=20)
        assert re.search(r"100 packets transmitted, 100 received", out), out
        assert "still forwarding" in lab.log(v3)  # v3 was told its own lease vanished, and kept going


def test_invalid_edits_keep_the_peers_and_the_follower():
    """Issue #12: a registry file swapped for one that is no UTF-8, nests 100,000 arrays or
    holds a 5,000-digit number used to kill the file follower silently; the next good file was
    never read. Each is now an error counted in vxland_registry_reload_errors."""
    with Lab(["vxland", "vxland"]) as lab:
        v1, v2 = lab.hosts
        hostile = [b'{"config": {}, "subnets": ', b"\xff\xfe{}", b"[" * 100_000,
                   b'{"config": {"Network": "172.7.0.0/16", "SubnetLen": ' + b"9" * 5000 + b'}, "subnets": {}}']
        for n, content in enumerate(hostile, start=1):
            tmp = lab.registry_path.with_suffix(".tmp")
            tmp.write_bytes(content)
            tmp.replace(lab.registry_path)
            assert wait_for(lambda n=n: lab.metrics(v1)["vxland_registry_reload_errors"] == n, timeout=5), \
                lab.log(v1)[-2000:]
        assert lab.ping(v1, v2, count=2).returncode == 0
        doc = lab.registry_doc()  # a good file again, with a new peer: learned
        doc["subnets"]["172.7.200.0-24"] = {"PublicIP": "198.18.0.77", "BackendType": "vxlan",
                                            "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:77"}}
        lab.write_registry(doc)
        assert wait_for(lambda: lab.metrics(v1)["vxland_peers"] == 2, timeout=5), lab.log(v1)[-2000:]
        assert v1.proc.poll() is None and "Traceback" not in lab.log(v1)
        assert lab.metrics(v1)["vxland_task_failures_total"] == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_tun_and_route(sig):
    with Lab(["vxland", "vxland"]) as lab:
        v1 = lab.hosts[0]
        assert "172.7.0.0/16 dev flannel.1" in sh(["ip", "route"], ns=v1.ns).stdout
        start = time.monotonic()
        rc = lab.stop_vxland(v1, sig)
        elapsed = time.monotonic() - start
        assert rc == 0
        assert elapsed < 2.0, f"took {elapsed:.2f} s"
        assert sh(["ip", "link", "show", "flannel.1"], ns=v1.ns, check=False).returncode != 0
        assert "172.7.0.0/16" not in sh(["ip", "route"], ns=v1.ns).stdout


def test_pure_python_mode_forwards():
    with Lab(["vxland", "vxland"], pure_python=True) as lab:
        v1, v2 = lab.hosts
        assert "fastpath python" in lab.log(v1)
        assert lab.ping(v1, v2, count=2, size=1422, dont_fragment=True).returncode == 0


@pytest.mark.parametrize("pure", [False, True], ids=["engine", "pure-python"])
def test_tun_deleted_under_the_daemon_exits_1_with_the_reason(pure):
    """Someone deletes the TUN (ip link del flannel.1): vxland used to stay up forwarding
    nothing, one core busy. Now it says why and exits 1, for systemd to start it again."""
    with Lab(["vxland", "vxland"], pure_python=pure) as lab:
        v1, v2 = lab.hosts
        sh(["ip", "link", "del", "flannel.1"], ns=v1.ns)
        assert v1.proc.wait(5) == 1
        log = lab.log(v1)
        assert "the data plane stopped" in log and "was the TUN device deleted?" in log, log[-1500:]
        assert "Traceback" not in log
        lab.start_node(v1)  # what Restart=on-failure does: a fresh TUN, traffic again
        assert lab.ping(v1, v2, count=2).returncode == 0


def test_disk_full_keeps_the_old_subnet_env(tmp_path):
    """subnet.env on a full file system: vxland says so and exits 1; the old file stays whole
    (it is written to a temporary file and renamed) and no temporary file is left."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    sh(["mount", "-t", "tmpfs", "-o", "size=64k", "vxland-test-full", str(mnt)])
    try:
        old = "FLANNEL_NETWORK=172.7.0.0/16\nFLANNEL_SUBNET=172.7.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        (mnt / "subnet.env").write_text(old)
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass  # full
        with Lab(["vxland", "vxland"], defer=(1,)) as lab:
            v1 = lab.hosts[0]
            v1.subnet_file = mnt / "subnet.env"
            lab.start_node(v1, wait=False)
            assert v1.proc.wait(10) == 1
            assert f"cannot write --subnet-file {mnt / 'subnet.env'}: No space left on device" in lab.log(v1)
        assert (mnt / "subnet.env").read_text() == old
        assert sorted(p.name for p in mnt.iterdir()) == ["filler", "subnet.env"]
    finally:
        sh(["umount", str(mnt)], check=False)
