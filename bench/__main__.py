"""``python -m bench``: vxland against the kernel vxlan anchor, measured side by side in one run.

Scenarios (one namespace lab each, built once, measured in interleaved rounds):

- ``kernel``: two Linux vxlan devices programmed as flanneld >= 0.9 does (the anchor)
- ``vxland``: vxland <-> vxland
- ``vxland-kernel``: vxland -> kernel vxlan node
- ``kernel-vxland``: kernel vxlan node -> vxland (the kernel node's offloads on, as on real hosts)
- ``kernel-vxland-txoff``: the same with tx checksum offload off on the kernel node (the old
  advice; it also takes the node's TSO away)
- ``kernel-vxland-udp``: that, and vxland receiving from its UDP socket (``--underlay-rx udp``):
  the data path before the packet socket, for A/B
- ``vxland-1port``, ``vxland-kernel-1port``: vxland <-> vxland and vxland -> kernel node with
  every flow leaving from the bound port (``--outer-source-ports 1``, the default until
  2026-11-30; compare with ``vxland`` and ``vxland-kernel``, whose flows leave from one of 32
  source ports each, as a kernel vxlan device's from one of its range)
- ``vxland-trains``, ``vxland-kernel-trains``: vxland <-> vxland and vxland -> kernel node with
  ``--tunnel-gso off``: super-packets leave as UDP GSO trains, the path of kernels before 6.17
  (compare with ``vxland`` and ``vxland-kernel``, whose super-packets leave whole where the
  kernel has tunnel GSO)
- ``vxland-batch``, ``vxland-other``: vxland <-> vxland with the engine threads always
  SCHED_BATCH (``--engine-sched batch``, the default until 2026-11-30) or always SCHED_OTHER
  (compare with ``vxland``, whose threads switch by how densely packets come)
- ``pure``: vxland <-> vxland with the pure-Python reference data plane
- ``capture``: vxland <-> vxland with ``--capture`` on both (the cost of capturing everything)
- ``nohook``: vxland <-> vxland built with the capture hook compiled out (what the hook costs
  when capture is off: compare with ``vxland``)
- ``strict``: vxland <-> vxland with ``--strict-source`` on both (what the check costs; off, it
  is one load and one branch per datagram: compare with ``vxland``)
- ``kernel6``, ``vxland6``, ``vxland-kernel6``, ``kernel-vxland6``: the same pairs in dual-stack
  clusters (EnableIPv6, on etcd), TCP over IPv6 only (1 and 4 streams): ``kernel6`` is the
  anchor of those figures

``--soak S``: after the rounds, S seconds of 4-stream load on ``vxland`` with one registry
change a second: RSS growth and open fds (``--rounds 0 --scenarios vxland --soak 600``: the soak
alone).

For each: iperf3 TCP with 1 and 4 streams, UDP with 64-byte payloads (receiver pps under an
unlimited flood, and the highest offered rate with < 1 % loss), ping RTT p50/p99 without load
and with every CPU busy (one CPU-bound process per CPU at nice 0, as on a node whose pods compute),
and CPU seconds per GB (the daemons', and the whole machine's) during the 1-stream TCP test.
Rounds are interleaved so that drift on a shared machine hits every scenario alike; figures
are medians with min-max. Writes ``bench/results/<UTC date>-<name>.json``, ``.md`` and
``.png`` and prints every figure as a ratio to the kernel anchor. Needs root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import measure, report
from vxlan import lab as labmod
from vxlan.lab import Lab

SCENARIOS = {
    # name: (lab kinds, client index, server index, pure python)
    "kernel": (["kernel", "kernel"], 0, 1, False),
    "vxland": (["vxland", "vxland"], 0, 1, False),
    "vxland-kernel": (["vxland", "kernel"], 0, 1, False),
    "kernel-vxland": (["vxland", "kernel"], 1, 0, False),
    "kernel-vxland-txoff": (["vxland", "kernel"], 1, 0, False),
    "kernel-vxland-udp": (["vxland", "kernel"], 1, 0, False),
    "vxland-1port": (["vxland", "vxland"], 0, 1, False),
    "vxland-kernel-1port": (["vxland", "kernel"], 0, 1, False),
    "vxland-trains": (["vxland", "vxland"], 0, 1, False),
    "vxland-batch": (["vxland", "vxland"], 0, 1, False),
    "vxland-other": (["vxland", "vxland"], 0, 1, False),
    "vxland-kernel-trains": (["vxland", "kernel"], 0, 1, False),
    "pure": (["vxland", "vxland"], 0, 1, True),
    "capture": (["vxland", "vxland"], 0, 1, False),  # vxland <-> vxland, both capturing everything
    "nohook": (["vxland", "vxland"], 0, 1, False),  # vxland <-> vxland built without the capture hook
    "strict": (["vxland", "vxland"], 0, 1, False),  # vxland <-> vxland, both with --strict-source
    # dual-stack clusters: TCP over IPv6 (IPV6_SCENARIOS)
    "kernel6": (["kernel", "kernel"], 0, 1, False),
    "vxland6": (["vxland", "vxland"], 0, 1, False),
    "vxland-kernel6": (["vxland", "kernel"], 0, 1, False),
    "kernel-vxland6": (["vxland", "kernel"], 1, 0, False),
}
IPV6_SCENARIOS = {"kernel6", "vxland6", "vxland-kernel6", "kernel-vxland6"}
# what a scenario's lab differs in (vxlan.lab.Lab keyword arguments)
LAB_OPTIONS: dict[str, dict] = {
    "kernel-vxland-txoff": {"kernel_tx_off": True},
    "kernel-vxland-udp": {"kernel_tx_off": True, "env": {"FLANNELD_UNDERLAY_RX": "udp"}},
    "vxland-1port": {"env": {"FLANNELD_OUTER_SOURCE_PORTS": "1"}},
    "vxland-kernel-1port": {"env": {"FLANNELD_OUTER_SOURCE_PORTS": "1"}},
    "vxland-trains": {"env": {"FLANNELD_TUNNEL_GSO": "off"}},
    "vxland-batch": {"env": {"FLANNELD_ENGINE_SCHED": "batch"}},
    "vxland-other": {"env": {"FLANNELD_ENGINE_SCHED": "other"}},
    "vxland-kernel-trains": {"env": {"FLANNELD_TUNNEL_GSO": "off"}},
    **{name: {"ipv6": True, "registry": "etcd"} for name in IPV6_SCENARIOS},
}
METRICS = ["tcp1_gbps", "tcp4_gbps", "tcp1_v6_gbps", "tcp4_v6_gbps", "udp64_flood_pps", "udp64_lossless_pps",
           "rtt_p50_ms", "rtt_p99_ms",
           "rtt_busy_p50_ms", "rtt_busy_p99_ms",
           "daemon_cpu_s_per_gb", "machine_cpu_s_per_gb", "udp64_daemon_cpu_us_per_pkt"]
FIXED_PPS = 50_000  # offered rate for the CPU-per-packet figure: well below every scenario's limit


def measure_once(lab: Lab, client_i: int, server_i: int, seconds: float, search_steps: int) -> dict[str, float]:
    client, server = lab.hosts[client_i], lab.hosts[server_i]
    out: dict[str, float] = {}
    if lab.ipv6:  # a dual-stack scenario: TCP over IPv6
        out["tcp1_v6_gbps"] = measure.iperf3(lab, client, server, seconds, ipv6=True)[0].bits_per_second / 1e9
        out["tcp4_v6_gbps"] = measure.iperf3(lab, client, server, seconds, streams=4,
                                             ipv6=True)[0].bits_per_second / 1e9
        return out
    with measure.CpuMeter(lab) as cpu:
        tcp1, _ = measure.iperf3(lab, client, server, seconds, streams=1)
    gb = tcp1.bytes / 1e9
    out["tcp1_gbps"] = tcp1.bits_per_second / 1e9
    out["daemon_cpu_s_per_gb"] = cpu.daemon_s / gb if cpu.procs and gb else float("nan")
    out["machine_cpu_s_per_gb"] = cpu.machine_s / gb if gb else float("nan")
    tcp4, _ = measure.iperf3(lab, client, server, seconds, streams=4)
    out["tcp4_gbps"] = tcp4.bits_per_second / 1e9
    flood_pps, _, offered_pps = measure.udp_flood_pps(lab, client, server, min(seconds, 5))
    out["udp64_flood_pps"] = flood_pps
    out["udp64_lossless_pps"] = measure.udp_lossless_pps(lab, client, server, min(seconds, 3), offered_pps,
                                                         steps=search_steps)
    out["rtt_p50_ms"], out["rtt_p99_ms"] = measure.ping_rtt_ms(lab, client, server)
    out["rtt_busy_p50_ms"], out["rtt_busy_p99_ms"] = measure.busy_ping_rtt_ms(lab, client, server)
    # CPU per small packet at a fixed rate: steadier than a loss threshold for comparing builds
    with measure.CpuMeter(lab) as cpu:
        fixed, _ = measure.iperf3(lab, client, server, min(seconds, 5), udp_rate=str(FIXED_PPS * 64 * 8), length=64)
    if cpu.procs and fixed.packets:
        out["udp64_daemon_cpu_us_per_pkt"] = cpu.daemon_s / fixed.packets * 1e6
    return out


def summarize(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    summary = {}
    for metric in METRICS:
        values = [s[metric] for s in samples if metric in s and s[metric] == s[metric]]  # drop NaN
        if values:
            summary[metric] = {"median": statistics.median(values), "min": min(values), "max": max(values),
                               "n": len(values)}
    return summary


def machine_facts() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "kernel": platform.release(),
            "python": platform.python_version()}


def build_nocapture() -> None:
    """The engine without its capture hook (setup.py: VXLAN_BUILD_NOCAPTURE), built in place
    the first time a bench asks for it; the product never ships it."""
    try:
        import fastpath._fastpath_nocapture  # noqa: F401
        return
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1]
    print("bench: building fastpath._fastpath_nocapture for the nohook scenario", flush=True)
    # an editable install builds the extensions in place (and pip brings Cython for the build)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                    "--root-user-action=ignore", "-e", str(root)], check=True,
                   env={**os.environ, "VXLAN_BUILD_NOCAPTURE": "1"})
    importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one round, 3 s tests: a smoke run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="iperf3 TCP duration (default 10)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of " + ", ".join(SCENARIOS))
    p.add_argument("--name", default="overlay", help="results file name part")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--soak", type=float, default=60.0,
                   help="seconds of 4-stream load on vxland<->vxland with a registry change a second, to check "
                        "RSS growth and fds (0: skip; --quick: 0)")
    p.add_argument("--scale", type=int, metavar="N",
                   help="instead: a node joining clusters of N leases (65536 fills a /8 with /24s) per registry "
                        "(etcd v3, etcd v2, file), beside 2 leases: start to converged, RSS, throughput, "
                        "per-packet CPU, a watch under 1,000 changes/s (bench/scale.py)")
    p.add_argument("--registries", default="etcd-v3,etcd-v2,file", help="with --scale: which registries")
    p.add_argument("--restarts", action="store_true",
                   help="instead: lost pings, longest gap and TCP dip across a reload, a restart with systemd's fd "
                        "store, kill -9 with and without it (bench/restarts.py)")
    args = p.parse_args(argv)
    if args.restarts:
        from bench import restarts

        return restarts.run(5.0 if args.quick else max(args.seconds, 8.0), args.out)
    if args.scale:
        from bench import scale

        if labmod.can_run():
            print(f"bench: {labmod.can_run()}", file=sys.stderr)
            return 1
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return scale.run(args.scale, 5.0 if args.quick else args.seconds,
                         [r for r in args.registries.split(",") if r], args.out)
    if args.quick:
        args.rounds, args.seconds, args.soak = 1, 3.0, 0.0
    reason = labmod.can_run()
    if reason:
        print(f"bench: {reason}", file=sys.stderr)
        return 1
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"bench: unknown scenario(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    missing = labmod.kernel_vxlan_missing()
    if missing:
        print(f"bench: skipping kernel scenarios: {missing}")
        names = [n for n in names if "kernel" not in n]

    # SIGTERM (or a SIGINT where the shell left it ignored) still tears the labs down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    labs: dict[str, Lab] = {}
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    started = dt.datetime.now(dt.UTC)
    try:
        for name in names:
            kinds, _, _, pure = SCENARIOS[name]
            # Kernel nodes keep their offloads on, as flannel nodes have them, but in the *-txoff
            # and *-udp scenarios (LAB_OPTIONS).
            options = dict(LAB_OPTIONS.get(name, {}))
            if name == "nohook":
                build_nocapture()
                options["env"] = {"VXLAN_FASTPATH_BUILD": "nocapture"}
            lab = Lab(kinds, pure_python=pure, **options).__enter__()
            labs[name] = lab
            # the whole cost of capture (rings, draining, pcapng) without filling the disk
            extra = {"capture": ["--capture", "/dev/null"], "strict": ["--strict-source"]}.get(name)
            if extra:
                for host in lab.hosts:
                    lab.stop_vxland(host)
                    host.extra_args = extra
                    lab.start_node(host)
        for rnd in range(1, args.rounds + 1):
            for name in names:
                _, ci, si, _ = SCENARIOS[name]
                t0 = time.monotonic()
                result = measure_once(labs[name], ci, si, args.seconds, search_steps=4 if args.quick else 7)
                samples[name].append(result)
                if name in IPV6_SCENARIOS:
                    print(f"round {rnd}/{args.rounds} {name:<14} IPv6: tcp1 {result['tcp1_v6_gbps']:.2f} Gbit/s, "
                          f"tcp4 {result['tcp4_v6_gbps']:.2f} [{time.monotonic() - t0:.0f} s]", flush=True)
                    continue
                print(f"round {rnd}/{args.rounds} {name:<14} tcp1 {result['tcp1_gbps']:.2f} Gbit/s, "
                      f"tcp4 {result['tcp4_gbps']:.2f}, udp64 {result['udp64_flood_pps']:,.0f} pps "
                      f"(loss-free {result['udp64_lossless_pps']:,.0f}), rtt p50 {result['rtt_p50_ms']:.3f} ms "
                      f"[{time.monotonic() - t0:.0f} s]", flush=True)
        soak = {}
        if args.soak and "vxland" in labs:
            soak = measure.soak(labs["vxland"], labs["vxland"].hosts[0], labs["vxland"].hosts[1], args.soak)
            print(f"soak {args.soak:.0f} s, {soak['registry_changes']} registry changes "
                  f"({soak['registry_changes_applied']} seen applied), vxland RSS: "
                  f"{soak['rss_5s_mb']:.1f} MB after 5 s, {soak['rss_end_mb']:.1f} MB at the end "
                  f"(growth {soak['rss_growth_mb']:+.1f} MB), fds {soak['fds_start']} -> {soak['fds_end']} "
                  f"(max {soak['fds_max']})")
    finally:
        for lab in labs.values():
            lab.teardown()

    results = {
        "date": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_facts(),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "scenarios": {n: {"samples": samples[n], "summary": summarize(samples[n])} for n in names},
        "soak": soak,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{started:%Y-%m-%d}-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    table = report.markdown(results)
    stem.with_suffix(".md").write_text(table)
    report.chart(results, stem.with_suffix(".png"))
    print()
    print(table)
    print(f"wrote {stem}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
