"""One measurement each: iperf3 TCP, UDP 64-byte pps (flood and loss-free), ping RTT, CPU per GB.

Every function runs inside a lab (``vxlan.lab.Lab``) between two pods; nothing leaves the lab.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from dataclasses import dataclass

import psutil

from vxlan.lab import Host, Lab, LabError, sh, stop_process


@dataclass
class Iperf:
    bits_per_second: float
    bytes: int
    seconds: float
    lost_percent: float = 0.0
    packets: int = 0


def iperf3(lab: Lab, client: Host, server: Host, seconds: float, streams: int = 1, udp_rate: str | None = None,
           length: int | None = None, ipv6: bool = False) -> tuple[Iperf, dict]:
    """Run iperf3 pod to pod (over IPv6 with ``ipv6``, in a dual-stack lab); the receiver's view
    and the raw JSON."""
    args = ["-P", str(streams)]
    if udp_rate is not None:
        args += ["-u", "-b", udp_rate]
    if length is not None:
        args += ["-l", str(length)]
    data = lab.iperf3(client, server, seconds, *args, ipv6=ipv6)
    end = data["end"]
    if udp_rate is not None:
        s = end["sum"]
        received = s["packets"] - s["lost_packets"]
        return Iperf(s["bits_per_second"], s["bytes"], s["seconds"], s["lost_percent"], received), data
    s = end["sum_received"]
    return Iperf(s["bits_per_second"], s["bytes"], s["seconds"]), data


def udp_flood_pps(lab: Lab, client: Host, server: Host, seconds: float) -> tuple[float, float, float]:
    """Under an unlimited 64-byte UDP flood: receiver packets per second, loss (%), and the
    rate the sender offered (packets per second)."""
    result, data = iperf3(lab, client, server, seconds, udp_rate="0", length=64)
    s = data["end"]["sum"]
    return result.packets / result.seconds, result.lost_percent, s["packets"] / s["seconds"]


def udp_lossless_pps(lab: Lab, client: Host, server: Host, seconds: float, ceiling_pps: float,
                     steps: int = 7) -> float:
    """Received pps at the highest offered 64-byte rate with < 1 % loss, by bisection between
    0 and ``ceiling_pps``: the rate the sender offered under the flood, the most it can offer.
    (Not the rate received under the flood: on 2 cores a flood starves the receiving iperf3,
    so that figure can lie far below a rate carried without loss.)"""
    lo, hi, best = 0.0, max(ceiling_pps, 10_000.0), 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        rate_bps = int(mid * 64 * 8)
        result, _ = iperf3(lab, client, server, seconds, udp_rate=str(rate_bps), length=64)
        if result.lost_percent < 1.0:
            lo, best = mid, max(best, result.packets / result.seconds)
        else:
            hi = mid
    return best


def ping_rtt_ms(lab: Lab, client: Host, server: Host, count: int = 200) -> tuple[float, float]:
    """p50 and p99 RTT (ms) of ``count`` pings 10 ms apart, no other load."""
    proc = sh(["ping", "-n", "-i", "0.01", "-c", str(count), "-W", "1", server.pod_ip], ns=client.pod_ns,
              check=False, timeout=count * 0.05 + 20)
    rtts = sorted(float(m) for m in re.findall(r"time=([\d.]+) ms", proc.stdout))
    if not rtts:
        raise LabError(f"no ping replies: {proc.stdout[-300:]}")
    return statistics.median(rtts), rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]


def busy_ping_rtt_ms(lab: Lab, client: Host, server: Host, count: int = 200) -> tuple[float, float]:
    """p50 and p99 RTT (ms) as ping_rtt_ms, while one CPU-bound process per CPU runs at nice 0
    (a node whose pods compute): what the data plane's wake-ups cost when no CPU is idle. The
    burners send nothing; they are ended by PID."""
    burners = [subprocess.Popen(["sh", "-c", "exec yes > /dev/null"]) for _ in range(psutil.cpu_count() or 1)]
    try:
        time.sleep(0.5)
        return ping_rtt_ms(lab, client, server, count)
    finally:
        for proc in burners:
            stop_process(proc)


class CpuMeter:
    """CPU seconds of the lab's daemons and of the whole machine over an interval."""

    def __init__(self, lab: Lab) -> None:
        self.procs = [psutil.Process(h.proc.pid) for h in lab.hosts if h.kind == "vxland" and h.proc]

    def _daemon_s(self) -> float:
        total = 0.0
        for p in self.procs:
            t = p.cpu_times()
            total += t.user + t.system
        return total

    @staticmethod
    def _machine_s() -> float:
        t = psutil.cpu_times()
        return t.user + t.system + t.softirq + t.irq + getattr(t, "steal", 0.0) * 0

    def __enter__(self) -> CpuMeter:
        self.d0, self.m0 = self._daemon_s(), self._machine_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon_s = self._daemon_s() - self.d0
        self.machine_s = self._machine_s() - self.m0


def soak(lab: Lab, client: Host, server: Host, seconds: float = 60.0) -> dict[str, float]:
    """``seconds`` of full 4-stream TCP load with one registry change a second (a lease added,
    then removed again: the follower re-reads the file, the peer table and the engine change):
    RSS (MB) and open fds of every vxland daemon, sampled every 5 s."""
    procs = [psutil.Process(h.proc.pid) for h in lab.hosts if h.kind == "vxland" and h.proc]
    srv = lab.popen(server.pod_ns, ["iperf3", "-s", "-1", "-B", server.pod_ip],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    cli = lab.popen(client.pod_ns, ["iperf3", "-c", server.pod_ip, "-t", str(seconds), "-P", "4"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = lab.registry_doc()
    extra = dict(base, subnets={**base["subnets"], "172.7.250.0-24": {
        "PublicIP": "198.18.0.250", "BackendType": "vxlan",
        "BackendData": {"VNI": lab.vni, "VtepMAC": "0e:00:00:00:fa:01"}}})  # nobody is sent to it
    samples: list[tuple[float, list[float], list[int]]] = []
    changes = applied = 0
    base_peers = lab.metrics(client)["vxland_peers"]
    t0 = time.monotonic()
    try:
        while True:
            now = time.monotonic() - t0
            if now >= seconds - 0.5 or cli.poll() is not None:
                break
            if now >= 5 * len(samples) + 5:
                samples.append((now, [p.memory_info().rss / 1e6 for p in procs], [p.num_fds() for p in procs]))
            lab.write_registry(extra if changes % 2 == 0 else base)
            changes += 1
            time.sleep(0.8)  # the follower polls every 0.5 s
            # applied: the client's peer count shows the lease (one /metrics read a second)
            applied += lab.metrics(client)["vxland_peers"] == base_peers + changes % 2
            time.sleep(max(0.0, t0 + changes - time.monotonic()))
    finally:
        stop_process(cli)
        stop_process(srv)
        lab.write_registry(base)
    if len(samples) < 2:
        raise LabError(f"the soak ended after {time.monotonic() - t0:.0f} s (iperf3 exit {cli.returncode})")
    _, early, fds0 = samples[0]
    _, late, fds1 = samples[-1]
    return {"seconds": seconds, "registry_changes": changes, "registry_changes_applied": applied,
            "rss_5s_mb": max(early), "rss_end_mb": max(late), "rss_max_mb": max(max(r) for _, r, _ in samples),
            "rss_growth_mb": max(b - a for a, b in zip(early, late, strict=True)),
            "fds_start": max(fds0), "fds_end": max(fds1), "fds_max": max(max(f) for _, _, f in samples)}
