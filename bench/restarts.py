"""``python -m bench --restarts``: what each kind of stop of vxland does to the pods' traffic.

In a lab of two vxland nodes and a kernel node on etcd, for each kind of stop of the first
vxland node: a ping from the second vxland node's pod to the first's, 100 a second, and an
iperf3 TCP stream the same way (1 s intervals), across

- ``reload``: SIGHUP (re-executed in place, a bridge forwarding meanwhile);
- ``restart-store``: SIGTERM, then started again with systemd's file-descriptor store given
  back (a stand-in for systemd, ``vxlan.lab.systemd``), as ``systemctl restart`` does;
- ``kill9-store``: kill -9, then started again with the store, as ``Restart=on-failure`` does;
- ``kill9``: kill -9, then started again without a store (a supervisor without one).

Reports the lost pings, the longest gap between answers, how long after the stop began
traffic was back (the first answer after the longest gap), and the TCP dip (the lowest second
against the median). Writes ``bench/results/<UTC date>-restarts.json`` and ``.md``.
"""

from __future__ import annotations

import datetime as dt
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench import report
from vxlan.lab import Lab, LabError
from vxlan.lab.systemd import FdStore

KINDS = ("reload", "restart-store", "kill9-store", "kill9")
PINGS = 800  # 8 s at 100 a second
STOP_AT_S = 3.0  # into the run
RESTART_AFTER_S = 0.3  # a supervisor's delay before starting again (RestartSec is 1 s in the unit)


def one(kind: str, seconds: float) -> dict[str, float]:
    with Lab(["vxland", "vxland", "kernel"], registry="etcd", defer=(1,)) as lab:
        h1, h2, _ = lab.hosts
        store = FdStore(lab.workdir / "notify.sock")
        try:
            lab.env["NOTIFY_SOCKET"] = str(store.path)
            cmd, _ = lab._node_cmd(h1)
            lab.start_node(h1)
            del lab.env["NOTIFY_SOCKET"]
            store.receive()
            ping = lab.popen(h2.pod_ns, ["ping", "-D", "-i", "0.01", "-c", str(PINGS), h1.pod_ip],
                             stdout=subprocess.PIPE, text=True)
            iperf: dict = {}
            tcp = threading.Thread(target=lambda: iperf.update(lab.iperf3(h2, h1, seconds)))
            tcp.start()
            time.sleep(STOP_AT_S)
            stopped = time.time()
            offset = h1.log_path.stat().st_size
            if kind == "reload":
                lab.reload_vxland(h1)
            else:
                if kind == "restart-store":
                    lab.stop_vxland(h1)
                else:
                    h1.proc.kill()
                    h1.proc.wait(5)
                time.sleep(RESTART_AFTER_S)
                offset = h1.log_path.stat().st_size
                if kind.endswith("-store"):
                    h1.proc = store.start(lab, h1, cmd, h1.log_path)
                else:
                    store.close()  # a supervisor without a store: the TUN and sockets went with the process
                    with open(h1.log_path, "ab") as log:
                        h1.proc = lab.popen(h1.ns, cmd, stdout=log, stderr=subprocess.STDOUT)
                lab.wait_started(h1, offset)
            out, _ = ping.communicate(timeout=60)
            tcp.join(60)
        finally:
            store.close()
    answers = sorted(float(m[1]) for m in re.finditer(r"^\[([\d.]+)\].*icmp_seq=\d+", out, re.M))
    gaps = [(b - a, b) for a, b in zip(answers, answers[1:], strict=False) if b >= stopped - 1]
    longest, back = max(gaps) if gaps else (0.0, stopped)
    rates = [i["sum"]["bits_per_second"] for i in iperf.get("intervals", [])]
    return {"lost_pings": PINGS - len(answers), "longest_gap_ms": longest * 1000,
            "back_after_stop_ms": max(0.0, back - stopped) * 1000,
            "tcp_median_gbps": statistics.median(rates) / 1e9 if rates else 0.0,
            "tcp_lowest_second_gbps": min(rates) / 1e9 if rates else 0.0,
            "tcp_dip": min(rates) / statistics.median(rates) if rates else 0.0}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Restarts {results['date']} on {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python "
             f"{m['python']}; a ping every 10 ms and iperf3 TCP from a pod "
             f"behind the other vxland, across each kind of stop of one vxland node. Command: "
             f"`{results['command']}`", "",
             "| stop | lost pings (of 800) | longest gap (ms) | it ended (ms after the stop began) "
             "| TCP lowest second / median |",
             "|---|---|---|---|---|"]
    for kind, fig in results["kinds"].items():
        lines.append(f"| {kind} | {fig['lost_pings']} | {fig['longest_gap_ms']:.0f} | "
                     f"{fig['back_after_stop_ms']:.0f} | "
                     f"{fig['tcp_lowest_second_gbps']:.2f} / {fig['tcp_median_gbps']:.2f} Gbit/s "
                     f"(x{fig['tcp_dip']:.2f}) |")
    return "\n".join(lines) + "\n"


def run(seconds: float, out_dir: Path) -> int:
    from bench.__main__ import machine_facts

    started = dt.datetime.now(dt.UTC)
    results: dict = {"date": started.isoformat(timespec="seconds"), "command": "python -m bench --restarts",
                     "machine": machine_facts(), "kinds": {}}
    for kind in KINDS:
        try:
            results["kinds"][kind] = fig = one(kind, seconds)
        except LabError as exc:
            print(f"{kind}: FAILED {exc}")
            return 1
        print(f"{kind:<14} lost {fig['lost_pings']} pings, longest gap {fig['longest_gap_ms']:.0f} ms, back "
              f"{fig['back_after_stop_ms']:.0f} ms after the stop, TCP lowest second x{fig['tcp_dip']:.2f}",
              flush=True)
    report.save(out_dir, f"{started:%Y-%m-%d}-restarts", results, markdown(results))
    return 0

