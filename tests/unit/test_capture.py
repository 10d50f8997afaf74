"""pcapng writing, filters, rotation and limits of the capture sinks (no root needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import PcapNgReader

from vxlan.capture import INBOUND, OVERLAY, UNDERLAY, CaptureHub, FileSink, Filter
from vxlan.wire import DropReason

OWN, PEER = "02:00:00:00:00:01", "02:00:00:00:00:02"


def inner(proto="icmp", dst="10.5.1.2"):
    l4 = {"icmp": ICMP(), "tcp": TCP(sport=1, dport=80), "udp": UDP(sport=5, dport=53)}[proto]
    return bytes(IP(src="10.5.2.2", dst=dst) / l4)


def records(n=1):
    out = []
    for i in range(n):
        pkt = inner()
        vx = bytes(VXLAN(vni=42) / Ether(dst=OWN, src=PEER, type=0x0800) / pkt)
        t = 1_764_000_000_000_000_000 + i * 1000
        out.append((t, UNDERLAY, INBOUND, 0, "198.18.0.2", 40000, "198.18.0.1", 8472, len(vx), vx))
        out.append((t + 1, OVERLAY, INBOUND, 0, "0.0.0.0", 0, "0.0.0.0", 0, len(pkt), pkt))
    bad = bytes(VXLAN(vni=7) / Ether(dst=OWN, src=PEER, type=0x0800) / inner())
    out.append((t + 2, UNDERLAY, INBOUND, int(DropReason.WRONG_VNI), "198.18.0.2", 40000, "198.18.0.1", 8472,
                len(bad), bad))
    return out


def read(path):
    with PcapNgReader(str(path)) as reader:
        return list(reader)


def test_pcapng_readable_with_interfaces_directions_and_comments(tmp_path):
    path = tmp_path / "c.pcapng"
    sink = FileSink(path, 2048, Filter())
    sink.feed(records(2))
    sink.close()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    pkts = read(path)
    assert len(pkts) == 5
    assert [p.sniffed_on for p in pkts[:2]] == ["underlay", "overlay"]
    assert all(p.direction == INBOUND for p in pkts)
    first = IP(bytes(pkts[0]))
    assert first.src == "198.18.0.2" and first[UDP].dport == 8472 and first[VXLAN].vni == 42
    assert first[VXLAN][Ether][ICMP] is not None
    assert IP(bytes(pkts[1]))[ICMP] is not None
    assert pkts[-1].comments == [b"drop: wrong_vni"]
    assert abs(float(pkts[0].time) - 1_764_000_000.0) < 1e-3  # microsecond resolution


def test_tshark_decodes_vxlan_on_8472(tmp_path):
    tshark = subprocess.run(["which", "tshark"], capture_output=True, text=True).stdout.strip()
    if not tshark:
        pytest.fail("tshark is not installed (make install)")
    path = tmp_path / "c.pcapng"
    sink = FileSink(path, 2048, Filter())
    sink.feed(records(1))
    sink.close()
    out = subprocess.run([tshark, "-r", str(path), "-d", "udp.port==8472,vxlan", "-T", "fields",
                          "-e", "frame.interface_name", "-e", "vxlan.vni", "-e", "icmp.type", "-e", "frame.comment"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].split("\t")[:3] == ["underlay", "42", "8"]
    assert out[1].split("\t")[:3] == ["overlay", "", "8"]
    assert "drop: wrong_vni" in out[2]


def test_filters():
    recs = records(1)
    assert all(Filter.parse("").match(r) for r in recs)
    assert [Filter.parse("proto=tcp").match(r) for r in recs] == [False, False, False]
    assert [Filter.parse("proto=icmp host=10.5.1.2").match(r) for r in recs] == [True, True, True]
    assert [Filter.parse("net=10.9.0.0/16").match(r) for r in recs] == [False, False, False]
    assert [Filter.parse("peer=198.18.0.9").match(r) for r in recs] == [False, True, False]
    for bad in ("proto", "color=red", "peer=1.2.3", "net=10.0.0.0/33"):
        with pytest.raises(ValueError, match="capture filter term"):
            Filter.parse(bad)


def test_count_limit_and_rotation(tmp_path):
    path = tmp_path / "c.pcapng"
    sink = FileSink(path, 2048, Filter(), count=3)
    sink.feed(records(5))
    assert sink.done and len(read(path)) == 3
    rot = FileSink(tmp_path / "r.pcapng", 2048, Filter(), max_bytes=600)
    for _ in range(4):
        rot.feed(records(1))
    rot.close()
    assert len(rot.files) >= 3 and rot.files[1].name == "r.pcapng.1"
    assert sum(len(read(f)) for f in rot.files) == 12  # complete and readable, every one


def test_unwritable_path_fails_at_once(tmp_path):
    with pytest.raises(OSError):
        FileSink(tmp_path / "missing-dir" / "c.pcapng", 2048, Filter())


def test_decode_prints_a_table(tmp_path):
    path = tmp_path / "c.pcapng"
    sink = FileSink(path, 2048, Filter())
    sink.feed(records(1))
    sink.close()
    out = subprocess.run([sys.executable, "-m", "vxlan.ctl", "decode", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "198.18.0.2:40000 > 198.18.0.1:8472 VNI 42" in lines[1] and "ICMP 10.5.2.2 > 10.5.1.2" in lines[1]
    assert lines[3].rstrip().endswith("wrong_vni")
    bad = subprocess.run([sys.executable, "-m", "vxlan.ctl", "decode", str(tmp_path / "none")],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "none" in bad.stderr


def test_trace_lines_and_rate_limit():
    import io

    from vxlan.capture import TraceSink, describe

    recs = records(1)
    assert describe(recs[0]) == "trace in  underlay peer 198.18.0.2 icmp 10.5.2.2 > 10.5.1.2 len 50"
    assert describe(recs[1]) == "trace in  overlay  icmp 10.5.2.2 > 10.5.1.2 len 28"
    assert describe(recs[2]).endswith("DROP wrong_vni")
    out = io.StringIO()
    sink = TraceSink(out, per_second=2)
    same_second = [(r[0],) + r[1:] for r in records(3)]  # 7 records within one second
    sink.feed(same_second)
    assert len(out.getvalue().splitlines()) == 2 and sink.suppressed == 5
    later = (same_second[0][0] + 2_000_000_000,) + same_second[0][1:]
    sink.feed([later])
    lines = out.getvalue().splitlines()
    assert lines[2] == "trace: 5 lines suppressed (limit 2/s)" and lines[3].startswith("trace in  underlay")


def test_capture_file_never_follows_links_or_takes_someone_elses_file(tmp_path):
    """Issue #12: --capture followed a symlink planted at PATH and truncated its target as root
    (the README puts captures in /var/tmp, where anyone can plant one)."""
    import os

    from vxlan.capture import FileSink, Filter

    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "cap.pcapng"
    planted.symlink_to(victim)
    with pytest.raises(OSError, match="is a symbolic link: not followed"):
        FileSink(planted, 2048, Filter.parse(None))
    linked = tmp_path / "hard.pcapng"
    os.link(victim, linked)
    with pytest.raises(OSError, match="has other hard links"):
        FileSink(linked, 2048, Filter.parse(None))
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs.pcapng"
        theirs.write_text("theirs")
        os.chown(theirs, 65534, 65534)
        with pytest.raises(OSError, match="belongs to uid 65534"):
            FileSink(theirs, 2048, Filter.parse(None))
        assert theirs.read_text() == "theirs"
    assert victim.read_text() == "precious"
    ours = tmp_path / "ours.pcapng"
    ours.write_text("old capture")
    ours.chmod(0o644)
    sink = FileSink(ours, 2048, Filter.parse(None))  # our own file: rewritten from scratch, 0600
    sink.close()
    assert ours.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a" and oct(ours.stat().st_mode & 0o777) == "0o600"
    FileSink(Path(os.devnull), 2048, Filter.parse(None)).close()


class CountingEngine:
    """The engine's capture calls, counted (no rings)."""

    def __init__(self) -> None:
        self.drains = 0
        self.on = False
        self.capture_lost = 0

    def capture_on(self, snaplen: int) -> None:
        self.on = True

    def capture_off(self) -> None:
        self.on = False

    def capture_drain(self) -> list:
        self.drains += 1
        return []


class ListSink:
    done = False

    def feed(self, records) -> None:
        pass

    def close(self) -> None:
        self.done = True


def test_hub_sleeps_while_no_sink_is_attached():
    engine = CountingEngine()
    hub = CaptureHub(engine, interval_s=0.005)
    try:
        time.sleep(0.1)
        assert engine.drains == 0  # 20 wake-ups at this interval if it polled
        sink = ListSink()
        hub.add(sink)
        time.sleep(0.1)
        assert engine.on and engine.drains >= 3
        hub.remove(sink)
        time.sleep(0.03)  # the thread sees no sink and goes back to sleep
        before = engine.drains
        time.sleep(0.1)
        assert not engine.on and engine.drains == before
    finally:
        hub.close()
    assert not hub._thread.is_alive()


def records6():
    """An IPv6 underlay record (a dual-stack node's) and its inner ICMPv6 and TCP packets."""
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    ping = bytes(IPv6(src="fd07:0:0:2::2", dst="fd07:0:0:1::2") / ICMPv6EchoRequest())
    tcp = bytes(IPv6(src="fd07:0:0:2::2", dst="fd07:0:0:1::2") / TCP(sport=40000, dport=443))
    vx = bytes(VXLAN(vni=1) / Ether(dst=OWN, src=PEER, type=0x86DD) / ping)
    t = 1_764_000_000_000_000_000
    return [(t, UNDERLAY, INBOUND, 0, "fd00:c612::2", 40000, "fd00:c612::1", 8472, len(vx), vx),
            (t + 1, OVERLAY, INBOUND, 0, "0.0.0.0", 0, "0.0.0.0", 0, len(ping), ping),
            (t + 2, OVERLAY, INBOUND, 0, "0.0.0.0", 0, "0.0.0.0", 0, len(tcp), tcp)]


def test_ipv6_underlay_records_get_an_ipv6_outer_header(tmp_path):
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6

    path = tmp_path / "c6.pcapng"
    sink = FileSink(path, 2048, Filter())
    sink.feed(records6())
    sink.close()
    first = IPv6(bytes(read(path)[0]))
    assert (first.src, first.dst, first.hlim, first.fl, first[UDP].dport) == ("fd00:c612::2", "fd00:c612::1", 64, 0,
                                                                               8472)
    assert first[VXLAN][Ether].type == 0x86DD and first[VXLAN][ICMPv6EchoRequest] is not None


def test_filters_and_trace_lines_for_ipv6():
    from vxlan.capture import describe

    recs = records6()
    assert [Filter.parse("peer=fd00:c612::2").match(r) for r in recs] == [True, True, True]
    assert [Filter.parse("peer=fd00:c612::9").match(r) for r in recs] == [False, True, True]
    assert [Filter.parse("net=fd07:0:0:1::/64").match(r) for r in recs] == [True, True, True]
    assert [Filter.parse("host=fd07:0:0:1::3").match(r) for r in recs] == [False, False, False]
    assert [Filter.parse("proto=icmp").match(r) for r in recs] == [True, True, False]  # ICMPv6 for IPv6
    assert [Filter.parse("proto=tcp net=fd07::/48").match(r) for r in recs] == [False, False, True]
    assert [Filter.parse("net=10.5.0.0/16").match(r) for r in recs] == [False, False, False]
    assert describe(recs[0]) == "trace in  underlay peer fd00:c612::2 icmp6 fd07:0:0:2::2 > fd07:0:0:1::2 len 70"
    assert describe(recs[2]) == "trace in  overlay  tcp [fd07:0:0:2::2]:40000 > [fd07:0:0:1::2]:443 len 60"
    with pytest.raises(ValueError, match="capture filter term"):
        Filter.parse("host=fd07::/48")
