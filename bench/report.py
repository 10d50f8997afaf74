"""Markdown table and PNG chart of a bench run; every figure also as a ratio to the kernel."""

from __future__ import annotations

import json
from pathlib import Path

LABELS = {
    "tcp1_gbps": ("TCP 1 stream", "Gbit/s"),
    "tcp4_gbps": ("TCP 4 streams", "Gbit/s"),
    "tcp1_v6_gbps": ("TCP over IPv6, 1 stream", "Gbit/s"),
    "tcp4_v6_gbps": ("TCP over IPv6, 4 streams", "Gbit/s"),
    "udp64_flood_pps": ("UDP 64 B rx under flood", "pps"),
    "udp64_lossless_pps": ("UDP 64 B loss-free", "pps"),
    "rtt_p50_ms": ("RTT p50", "ms"),
    "rtt_p99_ms": ("RTT p99", "ms"),
    "rtt_busy_p50_ms": ("RTT p50, CPUs busy", "ms"),
    "rtt_busy_p99_ms": ("RTT p99, CPUs busy", "ms"),
    "daemon_cpu_s_per_gb": ("daemon CPU", "s/GB"),
    "machine_cpu_s_per_gb": ("machine CPU", "s/GB"),
    "udp64_daemon_cpu_us_per_pkt": ("daemon CPU per 64 B packet at 50k pps", "us"),
}


def _fmt(value: float, unit: str) -> str:
    if unit == "pps":
        return f"{value:,.0f}"
    if unit in ("ms", "us"):
        return f"{value:.3f}"
    return f"{value:.2f}"


def markdown(results: dict) -> str:
    scen = results["scenarios"]
    # the anchor of each figure: the kernel pair that has it (kernel6 for the IPv6 ones)
    kernel = {**scen.get("kernel6", {}).get("summary", {}), **scen.get("kernel", {}).get("summary", {})}
    anchors = {"kernel", "kernel6"}
    m = results["machine"]
    lines = [f"Bench {results['date']} on {m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, "
             f"Python {m['python']}; {results['rounds']} round(s), TCP {results['seconds']:.0f} s; "
             f"median (min-max) and ratio to the kernel anchor. Command: `{results['command']}`", ""]
    header = "| metric | " + " | ".join(scen) + " |"
    lines += [header, "|---" * (len(scen) + 1) + "|"]
    for metric, (label, unit) in LABELS.items():
        cells = []
        for name in scen:
            s = scen[name]["summary"].get(metric)
            if s is None:
                cells.append("–")
                continue
            cell = f"{_fmt(s['median'], unit)} ({_fmt(s['min'], unit)}–{_fmt(s['max'], unit)})"
            k = kernel.get(metric)
            if k and k["median"] and name not in anchors:
                cell += f" ×{s['median'] / k['median']:.2f}"
            cells.append(cell)
        lines.append(f"| {label} ({unit}) | " + " | ".join(cells) + " |")
    soak = results.get("soak")
    if soak:
        changes = soak.get("registry_changes")
        lines += ["", f"Soak: {soak.get('seconds', 0):.0f} s of 4-stream load"
                      + (f" with {changes} registry changes (one a second, {soak.get('registry_changes_applied', '?')} "
                         "seen applied)" if changes else "")
                      + f": vxland RSS {soak['rss_5s_mb']:.1f} MB after 5 s, {soak['rss_end_mb']:.1f} MB at the end "
                      f"(growth {soak['rss_growth_mb']:+.1f} MB)"
                      + (f"; open fds {soak['fds_start']} at 5 s, {soak['fds_end']} at the end, at most "
                         f"{soak['fds_max']}" if "fds_start" in soak else "") + "."]
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scen = results["scenarios"]
    names = list(scen)
    panels = ["tcp1_gbps", "tcp4_gbps", "udp64_flood_pps", "rtt_p50_ms"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6))
    for ax, metric in zip(axes, panels, strict=True):
        med, lo, hi = [], [], []
        for n in names:
            s = scen[n]["summary"].get(metric, {"median": 0, "min": 0, "max": 0})
            med.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        colors = ["#777777" if n == "kernel" else "#1f77b4" for n in names]
        ax.bar(names, med, yerr=[lo, hi], color=colors, capsize=3)
        label, unit = LABELS[metric]
        ax.set_title(f"{label} ({unit})", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.suptitle(f"vxland vs kernel vxlan, {results['date']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save(out_dir: Path, stem_name: str, results: dict, table: str) -> None:
    """``<out_dir>/<stem_name>.json`` and ``.md`` (printed too): what a bench run leaves."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / stem_name
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {stem}.json, .md")
