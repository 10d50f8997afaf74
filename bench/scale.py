"""``python -m bench --scale N``: a node joining a cluster of N leases, per registry, side by side
with a 2-lease cluster in the same run.

For each registry (etcd v3, etcd v2, registry file) a lab of two vxland nodes in a 10.0.0.0/8
Network whose registry already holds N leases (N = 65,536 fills the /8 with /24s; the first is
skipped as flannel's SubnetMin does): the seconds from the first node's process start to all
peers in its engine (the start-up line), its RSS, then TCP 1-stream throughput and daemon CPU
per packet (64-byte UDP at a fixed rate) between the two nodes, against the same figures with
2 leases. On etcd v3, a writer then puts 1,000 new leases a second for 5 s: how long after the
last put the node has them all. Writes ``bench/results/<UTC date>-scale.json`` and ``.md``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

from bench import measure, report
from vxlan.lab import Lab, LabError, sh

NETWORK = "10.0.0.0/8"
FIXED_PPS = 50_000

SEED_V3 = """
import asyncio, json, sys
from aetcd import rpc
from vxlan.registry.etcd_client import EtcdClient, parse_endpoints
from bench.scale import lease_items
async def main(url, first, last):
    client = EtcdClient(parse_endpoints(url), timeout_s=60)
    ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=v.encode()))
           for k, v in lease_items(int(first), int(last))]
    for start in range(0, len(ops), 128):
        async def fn(ch, md, batch=ops[start:start + 128]):
            await rpc.KVStub(ch).Txn(rpc.TxnRequest(success=batch), timeout=60, metadata=md)
        await client._call(fn)
    await client.close()
asyncio.run(main(*sys.argv[1:]))
"""

SEED_V2 = """
import asyncio, sys
from vxlan.registry.select import EtcdSettings, open_store
from bench.scale import lease_items
async def main(url, first, last):
    store, sem = open_store(EtcdSettings(url, api="v2"), "v2", timeout_s=30), asyncio.Semaphore(16)
    async def put(k, v):
        async with sem:
            await store.put(k.encode(), v.encode(), None)
    await asyncio.gather(*(put(k, v) for k, v in lease_items(int(first), int(last))))
    await store.close()
asyncio.run(main(*sys.argv[1:]))
"""

# 1,000 puts a second changing existing leases (a new VtepMAC), paced, each put on its own
CHURN = """
import asyncio, sys, time
from vxlan.registry.etcd_client import EtcdClient, parse_endpoints
from bench.scale import lease_items
async def main(url, first, last, rate):
    client = EtcdClient(parse_endpoints(url), timeout_s=10)
    items = list(lease_items(int(first), int(last), generation=2))
    start, sem = time.monotonic(), asyncio.Semaphore(16)
    async def put(i, k, v):
        await asyncio.sleep(max(0.0, start + i / float(rate) - time.monotonic()))
        async with sem:
            await client.put(k.encode(), v.encode())
    await asyncio.gather(*(put(i, k, v) for i, (k, v) in enumerate(items)))
    print(time.monotonic() - start, flush=True)
    await client.close()
asyncio.run(main(*sys.argv[1:]))
"""


def lease_items(first: int, last: int, generation: int = 1):
    """(key, value) of fake leases for /24 number ``first``..``last - 1`` of 10.0.0.0/8 (the
    last byte of the VtepMAC is ``generation``: a changed lease)."""
    for i in range(first, min(last, 1 << 16)):
        value = {"PublicIP": f"100.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}", "PublicIPv6": None,
                 "BackendType": "vxlan",
                 "BackendData": {"VNI": 1, "VtepMAC": f"0e:00:00:{i >> 8:02x}:{i & 255:02x}:{generation:02x}"}}
        yield f"/coreos.com/network/subnets/10.{i >> 8}.{i & 255}.0-24", json.dumps(value, separators=(",", ":"))


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_cluster(registry: str, n: int, seconds: float, churn: bool) -> dict:
    """A 2-vxland lab whose registry holds ``n`` leases in all (theirs included)."""
    api = "v2" if registry == "etcd-v2" else "v3"
    kind = "file" if registry == "file" else "etcd"
    lab = Lab(["vxland", "vxland"], registry=kind, etcd_api=api, network=NETWORK, defer=(1, 2),
              seed_config=False)
    with lab:
        h1, h2 = lab.hosts
        # /24 number 0 is below SubnetMin; 1 and 2 go to the lab's two nodes (file: given;
        # etcd: the first free ones among the 100 candidates, here all but these are taken)
        fake = (3, n + 1)
        t0 = time.monotonic()
        if kind == "file":
            doc = lab.registry_doc()
            doc["config"] = {"Network": NETWORK, "Backend": {"Type": "vxlan"}}
            doc["subnets"].update({k.rsplit("/", 1)[1]: json.loads(v) for k, v in lease_items(*fake)})
            lab.write_registry(doc)
        else:
            lab.put_config({"Network": NETWORK, "Backend": {"Type": "vxlan"}})
            seed = SEED_V2 if api == "v2" else SEED_V3
            sh([sys.executable, "-c", seed, lab.etcd_endpoints, str(fake[0]), str(fake[1])], ns=lab.underlay_ns,
               timeout=900)
        seeded_s = time.monotonic() - t0
        start = time.monotonic()
        lab.start_node(h1, wait_s=300)
        converged = time.monotonic() - start
        out = {"leases": n, "seed_s": seeded_s, "start_to_converged_s": converged, "rss_mb": rss_mb(h1.proc.pid)}
        lab.start_node(h2, wait_s=300)
        out["peers"] = lab.metrics(h1)["vxland_peers"]
        tcp, _ = measure.iperf3(lab, h1, h2, seconds, streams=1)
        out["tcp1_gbps"] = tcp.bits_per_second / 1e9
        with measure.CpuMeter(lab) as cpu:
            fixed, _ = measure.iperf3(lab, h1, h2, min(seconds, 5), udp_rate=str(FIXED_PPS * 64 * 8), length=64)
        out["udp64_daemon_cpu_us_per_pkt"] = cpu.daemon_s / fixed.packets * 1e6 if fixed.packets else float("nan")
        out["rss_after_load_mb"] = rss_mb(h1.proc.pid)
        if churn:  # the watch is ordered: once the last change is in the engine, all are
            extra = 5000
            last = f"10.{(2 + extra) >> 8}.{(2 + extra) & 255}.0/24"
            written = sh([sys.executable, "-c", CHURN, lab.etcd_endpoints, "3", str(3 + extra), "1000"],
                         ns=lab.underlay_ns, timeout=120)
            done = time.monotonic()

            def applied() -> bool:
                peers = json.loads(lab.http_get(h1, "/peers"))["peers"]
                return any(p["subnet"] == last and p["vtep_mac"].endswith(":02") for p in peers)
            while not applied() and time.monotonic() < done + 60:
                time.sleep(0.1)
            out["churn_puts"] = extra
            out["churn_write_s"] = float(written.stdout.strip() or "nan")
            out["churn_lag_after_last_put_s"] = time.monotonic() - done
            out["churn_learned"] = extra if applied() else 0
        return out


def run(n: int, seconds: float, registries: list[str], out_dir: Path) -> int:
    started = dt.datetime.now(dt.UTC)
    results: dict = {"date": started.isoformat(timespec="seconds"), "command": f"python -m bench --scale {n}",
                     "registries": {}}
    from bench.__main__ import machine_facts

    results["machine"] = machine_facts()
    for registry in registries:
        for count in (2, n):
            label = f"{registry} {count}"
            try:
                fig = one_cluster(registry, count, seconds, churn=(registry == "etcd-v3" and count == n))
            except LabError as exc:
                print(f"{label}: FAILED {exc}", file=sys.stderr)
                return 1
            results["registries"].setdefault(registry, {})[str(count)] = fig
            print(f"{label:>16} leases: start -> converged {fig['start_to_converged_s']:.2f} s, RSS "
                  f"{fig['rss_mb']:.0f} MB ({fig['rss_after_load_mb']:.0f} after load), peers {fig['peers']:.0f}, "
                  f"tcp1 {fig['tcp1_gbps']:.2f} Gbit/s, {fig['udp64_daemon_cpu_us_per_pkt']:.2f} us/pkt"
                  + (f"; 1,000 puts/s for {fig['churn_write_s']:.1f} s: all {fig['churn_learned']:.0f} learned "
                     f"{fig['churn_lag_after_last_put_s']:.2f} s after the last" if "churn_lag_after_last_put_s" in fig
                     else ""), flush=True)
    report.save(out_dir, f"{started:%Y-%m-%d}-scale", results, markdown(results))
    return 0


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Scale: {results['date']}, {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}", "",
             "| registry | leases | start to converged (s) | RSS (MB) | RSS after load | TCP 1 stream (Gbit/s) | "
             "daemon CPU per 64 B packet (us) |", "|---|---|---|---|---|---|---|"]
    for registry, by_n in results["registries"].items():
        for count, f in by_n.items():
            lines.append(f"| {registry} | {int(count):,} | {f['start_to_converged_s']:.2f} | {f['rss_mb']:.0f} | "
                         f"{f['rss_after_load_mb']:.0f} | {f['tcp1_gbps']:.2f} | "
                         f"{f['udp64_daemon_cpu_us_per_pkt']:.2f} |")
            if "churn_lag_after_last_put_s" in f:
                lines.append(f"| {registry} watch | +{f['churn_puts']:,} at 1,000/s | all learned "
                             f"{f['churn_lag_after_last_put_s']:.2f} s after the last put | | | | |")
    return "\n".join(lines) + "\n"

