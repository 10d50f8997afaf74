"""vxland as a drop-in flanneld: a supervisord command line with TLS to etcd, host-gw and
vxlan DirectRouting clusters, --ip-masq rules as flanneld installs them, /readyz and
sd_notify, the systemd unit."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.helpers import MB, seen_source, transfer, wait_for
from vxlan import iptables as ipt
from vxlan.lab import Lab, LabError, sh, stop_process

ROOT = Path(__file__).resolve().parents[2]



def http_status(lab: Lab, host, path: str) -> int | None:
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n"
            "except OSError:\n    print(0)\n")
    out = sh([sys.executable, "-c", code, f"http://127.0.0.1:{lab.healthz_port}{path}"], ns=host.ns).stdout
    return int(out.strip() or 0) or None


def all_pairs_ping(lab: Lab) -> None:
    for src in lab.hosts:
        for dst in lab.hosts:
            if src is not dst:
                ok = lab.ping(src, dst, count=2).returncode == 0
                assert ok, f"h{src.index}->h{dst.index}\n{lab.log(src)[-1500:]}"


# -- a supervisord program section, taken literally ---------------------------------------

def supervisord_command() -> list[str]:
    text = (ROOT / "contrib" / "supervisord.conf").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("command="))
    return shlex.split(line.removeprefix("command="))


def test_supervisord_command_line_with_tls_joins_mixed_cluster(kernel_vxlan):
    """contrib/supervisord.conf's command line, only addresses and file paths swapped for the
    lab's, against an etcd that demands client certificates; a kernel flanneld node shares it."""
    with Lab(["vxland", "kernel"], registry="etcd", etcd_tls=True, defer=(1,)) as lab:
        v = lab.hosts[0]
        cert = lab.workdir
        swap = {"--public-ip": v.public_ip, "--etcd-endpoints": lab.etcd_endpoints,
                "--etcd-keyfile": str(cert / "client.key"), "--etcd-certfile": str(cert / "client.crt"),
                "--etcd-cafile": str(cert / "ca.crt"), "--iface": "eth0", "--subnet-file": str(v.subnet_file),
                "--healthz-port": str(lab.healthz_port)}
        cmd = supervisord_command()
        assert Path(cmd[0]).name == "vxland"
        args = []
        for arg in cmd[1:]:
            name, eq, _ = arg.partition("=")
            assert name in swap or not eq or name.lstrip("-") in ("ip-masq", "iptables-forward-rules", "v"), arg
            args.append(f"{name}={swap[name]}" if name in swap else arg)
        assert set(swap) <= {a.partition("=")[0] for a in args}
        v.log_path = lab.workdir / "h1.log"
        with open(v.log_path, "wb") as log:
            v.proc = lab.popen(v.ns, [sys.executable, "-m", "vxlan", *args], stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
        lab.wait_node(v)
        all_pairs_ping(lab)
        assert http_status(lab, v, "/readyz") == 200
        leases = lab.etcd_leases()
        assert {val["PublicIP"] for val in leases.values()} == {h.public_ip for h in lab.hosts}
        assert "FLANNEL_IPMASQ=true" in v.subnet_file.read_text()


# -- host-gw and DirectRouting ------------------------------------------------------------

def routes(lab: Lab, host) -> str:
    return sh(["ip", "route", "show"], ns=host.ns).stdout


def test_host_gw_cluster():
    with Lab(["vxland", "vxland", "kernel"], registry="etcd", backend={"Type": "host-gw"}) as lab:
        all_pairs_ping(lab)
        h1, h2, h3 = lab.hosts
        leases = lab.etcd_leases()
        assert all(v["BackendType"] == "host-gw" and "BackendData" not in v for v in leases.values()), leases
        table = routes(lab, h1)
        for peer in (h2, h3):
            assert f"{peer.subnet} via {peer.public_ip} dev eth0" in table, table
        assert "flannel" not in sh(["ip", "link"], ns=h1.ns).stdout  # no tunnel device
        assert "FLANNEL_MTU=1500" in h1.subnet_file.read_text()
        peers = json.loads(lab.http_get(h1, "/peers"))["peers"]
        assert sorted(p["via"] for p in peers) == ["route", "route"]
        # routeCheck: a route someone deleted comes back within the 10 s period
        sh(["ip", "route", "del", str(h2.subnet)], ns=h1.ns)
        assert wait_for(lambda: f"{h2.subnet} via {h2.public_ip}" in routes(lab, h1), timeout=15), routes(lab, h1)


def test_host_gw_refuses_a_nat_public_ip():
    with Lab(["vxland"], registry="etcd", backend={"Type": "host-gw"}, defer=(1,)) as lab:
        h = lab.hosts[0]
        h.extra_args = ["--public-ip", "203.0.113.9"]
        with pytest.raises(LabError):
            lab.start_node(h, wait_s=8)
        assert h.proc is not None and h.proc.wait(5) == 1
        assert "probably you're on a NAT, which is not supported by host-gw backend" in lab.log(h)


def vxlan_packets(lab: Lab, link: str, action) -> int:
    """VXLAN datagrams on the underlay link ``link`` (in the underlay namespace) while ``action`` runs."""
    out = lab.workdir / f"cap-{link}.txt"
    with open(out, "w") as f:
        dump = lab.popen(lab.underlay_ns, ["tcpdump", "-i", link, "-n", "-l", "udp port 8472"], stdout=f,
                         stderr=subprocess.PIPE, text=True)
        assert dump.stderr is not None
        dump.stderr.readline()  # "listening on ..."
        action()
        time.sleep(0.3)
        stop_process(dump)
    return len([ln for ln in out.read_text().splitlines() if "VXLAN" in ln or ".8472" in ln])


def test_direct_routing_bypasses_the_tunnel_on_the_same_segment():
    """h1 and h2 share a segment: plain routed packets. h3 is behind a router: VXLAN."""
    with Lab(["vxland", "vxland", "vxland"], registry="etcd", backend={"DirectRouting": True},
             segments=(1, 1, 2)) as lab:
        h1, h2, h3 = lab.hosts
        all_pairs_ping(lab)
        table = routes(lab, h1)
        assert f"{h2.subnet} via {h2.public_ip} dev eth0" in table, table
        assert f"{h3.subnet} via" not in table, table
        vias = {p["subnet"]: p["via"] for p in json.loads(lab.http_get(h1, "/peers"))["peers"]}
        assert vias == {str(h2.subnet): "route", str(h3.subnet): "tunnel"}
        same = vxlan_packets(lab, "h1", lambda: lab.ping(h1, h2, count=5, interval=0.05))
        routed = vxlan_packets(lab, "h1", lambda: lab.ping(h1, h3, count=5, interval=0.05))
        assert same == 0 and routed >= 10, (same, routed)


# -- --ip-masq ----------------------------------------------------------------------------

def expected_rules(network: str, subnet: str) -> list[str]:
    m, f = '-m comment --comment "flanneld masq"', '-m comment --comment "flanneld forward"'
    return [
        "*filter", ":INPUT ACCEPT", ":FORWARD ACCEPT", ":OUTPUT ACCEPT", ":FLANNEL-FWD -",
        f"-A FORWARD {f} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s {network} {f} -j ACCEPT",
        f"-A FLANNEL-FWD -d {network} {f} -j ACCEPT",
        "COMMIT",
        "*nat", ":PREROUTING ACCEPT", ":INPUT ACCEPT", ":OUTPUT ACCEPT", ":POSTROUTING ACCEPT", ":FLANNEL-POSTRTG -",
        f"-A POSTROUTING {m} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {subnet} -d {network} {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {network} -d {subnet} {m} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {network} -d {subnet} {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {network} ! -d 224.0.0.0/4 {m} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {network} -d {network} {m} -j MASQUERADE --random-fully",
        "COMMIT",
    ]


def iptables_save(lab: Lab, host, env: dict) -> list[str]:
    out = sh(["env", f"PATH={env.get('PATH', os.environ['PATH'])}", "iptables-save"], ns=host.ns).stdout
    # comments and packet counters say nothing about the rules
    return [ln.split(" [")[0] for ln in out.splitlines() if ln and not ln.startswith("#")]


@pytest.fixture(params=["nft", "legacy"])
def iptables_flavour(request):
    """PATH with iptables, iptables-restore and iptables-save of one flavour first."""
    d = Path(tempfile.mkdtemp(prefix="vxlan-ipt-"))
    for tool in ("iptables", "iptables-restore", "iptables-save"):
        target = shutil.which(tool.replace("iptables", f"iptables-{request.param}"))
        if target is None:
            pytest.fail(f"iptables-{request.param} is not installed (make install)")
        (d / tool).symlink_to(target)
    yield {"PATH": f"{d}:{os.environ['PATH']}"}
    shutil.rmtree(d, ignore_errors=True)


def test_ip_masq_rules_and_masquerade(iptables_flavour):
    env = iptables_flavour
    with Lab(["vxland", "vxland"], registry="etcd", defer=(1, 2), env=env) as lab:
        h1, h2 = lab.hosts
        for h in lab.hosts:
            h.extra_args = ["--ip-masq", "--iptables-resync=1", "--iptables-forward-rules=true"]
            lab.start_node(h)
        want = expected_rules(str(lab.network), str(h1.subnet))
        assert iptables_save(lab, h1, env) == want
        flavour = "nf_tables" if "nft" in env["PATH"].split(":")[0] or "nft" in os.readlink(
            Path(env["PATH"].split(":")[0]) / "iptables") else "legacy"
        assert f"rules installed ({flavour})" in lab.log(h1)

        out_ns, out_ip = lab.add_outside()
        assert seen_source(lab, h1.pod_ns, out_ns, out_ip) == h1.public_ip  # masqueraded
        assert seen_source(lab, h1.pod_ns, h2.pod_ns, h2.pod_ip, port=9001) == h1.pod_ip  # pod to pod: not

        # the resync puts back a rule someone deleted, in its place
        sh(["env", f"PATH={env['PATH']}", "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "-s", str(lab.network),
            "-d", str(h1.subnet), "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN"], ns=h1.ns)
        assert iptables_save(lab, h1, env) != want
        assert wait_for(lambda: iptables_save(lab, h1, env) == want, timeout=5), iptables_save(lab, h1, env)


# flanneld's nftables rules for --ip-masq and the forward rules, as `nft list ruleset` prints
# them (pkg/trafficmngr/nftables/nftables.go at v0.28.9: Init makes both tables, main.go sets up
# the masquerade chain first); {rf} is " fully-random" where the kernel has it.
NFT_RULESET = """table ip flannel-ipv4 {{
\tcomment "rules for flannel-ipv4"
\tchain postrtg {{
\t\tcomment "chain to manage traffic masquerading by flannel"
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark 0x00004000 return
\t\tip saddr {s} ip daddr {n} return
\t\tip saddr {n} ip daddr {s} return
\t\tip saddr != {s} ip daddr {n} return
\t\tip saddr {n} ip daddr != 224.0.0.0/4 masquerade{rf}
\t\tip saddr != {n} ip daddr {n} masquerade{rf}
\t}}

\tchain forward {{
\t\tcomment "chain to accept flannel traffic"
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr {n} accept
\t\tip daddr {n} accept
\t}}
}}
table ip6 flannel-ipv6 {{
\tcomment "rules for flannel-ipv6"
}}
"""


def test_enable_nftables_writes_flanneld_rules_and_puts_them_back():
    with Lab(["vxland", "vxland"], registry="etcd", seed_config=False, defer=(1, 2)) as lab:
        lab.put_config({**lab.default_config(), "EnableNFTables": True})
        h1, h2 = lab.hosts
        for h in lab.hosts:
            h.extra_args = ["--ip-masq", "--iptables-resync=1", "--iptables-forward-rules=true"]
            lab.start_node(h)
        want = NFT_RULESET.format(s=h1.subnet, n=lab.network, rf=" fully-random")
        assert sh(["nft", "list", "ruleset"], ns=h1.ns).stdout == want
        assert "masquerade and forward rules installed (nftables" in lab.log(h1)
        assert "FLANNEL" not in sh(["iptables-save"], ns=h1.ns).stdout  # no iptables rules beside them

        out_ns, out_ip = lab.add_outside()
        assert seen_source(lab, h1.pod_ns, out_ns, out_ip) == h1.public_ip  # masqueraded
        assert seen_source(lab, h1.pod_ns, h2.pod_ns, h2.pod_ip, port=9001) == h1.pod_ip  # pod to pod: not

        # the resync puts back a rule someone deleted (flanneld's nftables mode would not)
        listing = sh(["nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg"], ns=h1.ns).stdout
        handle = next(ln.rsplit("# handle ", 1)[1] for ln in listing.splitlines() if "daddr != 224.0.0.0/4" in ln)
        sh(["nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle], ns=h1.ns)
        assert sh(["nft", "list", "ruleset"], ns=h1.ns).stdout != want
        assert wait_for(lambda: sh(["nft", "list", "ruleset"], ns=h1.ns).stdout == want, timeout=5)
        assert "flannel's nftables rules changed; putting them back" in lab.log(h1)

        # vxlanctl doctor says which manager the config asks for, and whether nft is there for it
        ok = doctor(lab, h1, "--healthz-port", str(lab.healthz_port))
        assert "host rules with nftables (EnableNFTables)" in ok.stdout and "ok   nftables" in ok.stdout, ok.stdout
        bad = doctor(lab, h1, "--healthz-port", str(lab.healthz_port), wrap=["env", "PATH=/usr/bin:/bin"])
        assert bad.returncode == 1 and "FAIL nftables" in bad.stdout and "apt-get install nftables" in bad.stdout

        # started again with a config without it: flannel's tables go, iptables rules come
        lab.stop_vxland(h1)
        lab.put_config(lab.default_config())
        lab.start_node(h1)
        assert sh(["nft", "list", "tables"], ns=h1.ns).stdout.count("flannel-ipv") == 0
        assert "removed flannel's nftables tables" in lab.log(h1)
        assert "FLANNEL-POSTRTG" in sh(["iptables-save", "-t", "nat"], ns=h1.ns).stdout


# -- readiness ----------------------------------------------------------------------------

def test_readyz_goes_503_to_200_and_systemd_hears_ready():
    notify_dir = Path(tempfile.mkdtemp(prefix="vxlan-notify-"))
    sock_path = notify_dir / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(15)
    try:
        with Lab(["vxland"], registry="etcd", seed_config=False, defer=(1,),
                 env={"NOTIFY_SOCKET": str(sock_path)}) as lab:
            h = lab.hosts[0]
            lab.start_node(h, wait=False)
            # up, waiting for the network config: alive but not ready
            assert wait_for(lambda: http_status(lab, h, "/healthz") == 200, timeout=10), lab.log(h)
            assert http_status(lab, h, "/readyz") == 503
            assert lab.metrics(h)["vxland_ready"] == 0
            lab.put_config()
            lab.wait_node(h)
            assert http_status(lab, h, "/readyz") == 200
            assert lab.http_get(h, "/readyz") == "flanneld is ready"
            # first the TUN and sockets go to the fd store (FDSTORE=1; their fds are dropped by
            # this recv), then READY=1
            messages = [listener.recv(4096).decode()]
            while "READY=1" not in messages[-1].split("\n"):
                messages.append(listener.recv(4096).decode())
            assert "FDSTORE=1\nFDNAME=tun" in messages[:-1], messages
            lab.stop_vxland(h)
            assert "STOPPING=1" in listener.recv(4096).decode()
    finally:
        listener.close()
        shutil.rmtree(notify_dir, ignore_errors=True)


def test_systemd_unit_verifies(tmp_path):
    """contrib/vxland.service passes systemd-analyze verify (ExecStart pointed at where this
    machine installed vxland; the unit is otherwise as shipped)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (make install)")
    binary = shutil.which("vxland")
    assert binary is not None, "vxland is not installed (make install)"
    unit = (ROOT / "contrib" / "vxland.service").read_text().replace("/usr/local/bin/vxland", binary)
    (tmp_path / "vxland.service").write_text(unit)
    proc = subprocess.run([analyze, "verify", str(tmp_path / "vxland.service")], capture_output=True, text=True)
    assert proc.returncode == 0 and "vxland.service" not in proc.stderr, proc.stderr
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit and "FileDescriptorStoreMax=" in unit


# -- vxlanctl doctor and peers ------------------------------------------------------------

def doctor(lab: Lab, host, *extra: str, wrap: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "vxlan.ctl", "doctor", "--etcd-endpoints", lab.etcd_endpoints, "--iface", "eth0",
           *extra]
    return sh([*(wrap or []), *cmd], ns=host.ns, check=False)


def test_doctor_all_good_and_each_fix():
    with Lab(["vxland", "vxland"], registry="etcd", defer=(2,)) as lab:
        h1, h2 = lab.hosts
        # a host running vxland: its port counts as held by vxland
        ok = doctor(lab, h1, "--healthz-port", str(lab.healthz_port))
        assert ok.returncode == 0 and ok.stdout.strip().endswith("all good"), ok.stdout + ok.stderr
        # ... also with no flags but the etcd endpoints (issue #12: vxland's own port was "taken",
        # and no default route in the namespace failed the underlay check): the running
        # vxland's port and --iface are recognised
        cmd = [sys.executable, "-m", "vxlan.ctl", "doctor", "--etcd-endpoints", lab.etcd_endpoints]
        ok = sh(cmd, ns=h1.ns, check=False)
        assert ok.returncode == 0 and "held by the running vxland (pid" in ok.stdout, ok.stdout + ok.stderr
        # ... and one about to run it
        ok = doctor(lab, h2)
        assert ok.returncode == 0 and "all good" in ok.stdout, ok.stdout
        # port taken by someone else
        holder = lab.popen(h2.ns, [sys.executable, "-c", "import socket, time; s = socket.socket(2, 2); "
                                   "s.bind(('0.0.0.0', 8472)); print('bound', flush=True); time.sleep(60)"],
                           stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        bad = doctor(lab, h2)
        stop_process(holder)
        assert bad.returncode == 1 and "FAIL port" in bad.stdout and "ss -ulpn" in bad.stdout, bad.stdout
        # no TUN: /dev/net hidden in a private mount namespace
        bad = doctor(lab, h2, wrap=["unshare", "-m", "sh", "-c", 'mount -t tmpfs none /dev/net && exec "$@"', "-"])
        assert bad.returncode == 1 and "FAIL tun" in bad.stdout and "mknod /dev/net/tun" in bad.stdout, bad.stdout
        # etcd down
        bad = doctor(lab, h2, "--etcd-endpoints", "http://198.18.0.99:2379")
        assert bad.returncode == 1 and "FAIL etcd" in bad.stdout and "fix: start etcd" in bad.stdout, bad.stdout
        # missing config
        lab.etcdctl("del", "/coreos.com/network/config")
        bad = doctor(lab, h2)
        assert bad.returncode == 1 and "FAIL config" in bad.stdout and "etcdctl put /coreos.com/network/config" \
            in bad.stdout, bad.stdout


def test_vxlanctl_peers():
    with Lab(["vxland", "vxland", "vxland"], registry="etcd") as lab:
        h1, h2, h3 = lab.hosts
        out = sh([sys.executable, "-m", "vxlan.ctl", "peers", "--healthz-port", str(lab.healthz_port)],
                 ns=h1.ns).stdout
        for peer in (h2, h3):
            assert f"{peer.subnet}" in out and peer.public_ip in out
        assert "2 peer(s)" in out and "tunnel" in out


# -- no Backend: flannel's udp backend ----------------------------------------------------

def test_config_without_backend_runs_flannels_udp_backend():
    """flanneld's code picks "udp" when the config has no Backend; so does vxland, and says so.
    On the wire: the bare inner IP packet in UDP 8285."""
    with Lab(["vxland", "vxland"], registry="etcd", backend={"Type": None}) as lab:
        h1, h2 = lab.hosts
        assert 'no "Backend"' in lab.log(h1) and "udp backend" in lab.log(h1)
        leases = lab.etcd_leases()
        assert all(set(v) == {"PublicIP", "PublicIPv6"} for v in leases.values()), leases  # no BackendType
        assert "FLANNEL_MTU=1472" in h1.subnet_file.read_text()
        all_pairs_ping(lab)
        sent, received = transfer(lab, h1, h2, 5 * MB)
        assert received == sent
        out = lab.workdir / "udp8285.txt"
        with open(out, "w") as f:
            dump = lab.popen(lab.underlay_ns, ["tcpdump", "-i", "h1", "-n", "-l", "-x", "udp port 8285"], stdout=f,
                             stderr=subprocess.PIPE, text=True)
            assert dump.stderr is not None
            dump.stderr.readline()
            lab.ping(h1, h2, count=3, interval=0.05)
            time.sleep(0.3)
            stop_process(dump)
        text = out.read_text()
        # outer IPv4 (20) + UDP (8): the payload's first byte is the inner header's 0x45
        assert text.count("UDP, length 84") >= 6, text[:2000]
        assert "0x0010:" in text and " 4500 " in text.split("0x0010:")[1].split("\n")[0] + " 4500 "
        # a destination in no peer's subnet: an ICMP net unreachable (56 bytes) written into the
        # TUN, as flannel's proxy does. Its source is the TUN's own /32, as flannel's, so the
        # kernel drops it as a martian unless accept_local is set (then the sender sees it).
        def tun_rx() -> tuple[int, int]:
            stats = json.loads(sh(["ip", "-s", "-j", "link", "show", "flannel0"], ns=h1.ns).stdout)[0]["stats64"]["rx"]
            return stats["packets"], stats["bytes"]
        before = tun_rx()
        probe = ("import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                 "s.setsockopt(socket.IPPROTO_IP, 11, 1)\n"  # IP_RECVERR: net unreachable is no fatal error
                 "s.connect(('172.7.200.9', 9)); s.send(b'x'); time.sleep(0.5)\n"
                 "try:\n    s.send(b'x'); print('no error')\nexcept OSError as e:\n    print(e.errno)\n")
        sh([sys.executable, "-c", probe], ns=h1.pod_ns)
        after = tun_rx()
        assert (after[0] - before[0], after[1] - before[1]) == (2, 112), (before, after)
        assert lab.metrics(h1)['vxland_drops_total{reason="no_route"}'] == 2
        sh(["sysctl", "-qw", "net.ipv4.conf.flannel0.accept_local=1"], ns=h1.ns)
        assert sh([sys.executable, "-c", probe], ns=h1.pod_ns).stdout.strip() == "101"  # ENETUNREACH


def test_ip_masq_removes_the_rules_of_a_previous_network():
    """subnet.env of an earlier run names another Network and subnet: their rules go (flannel's
    SetupAndEnsureMasqRules), the current ones come, nothing else is touched."""
    with Lab(["vxland"], registry="etcd", defer=(1,)) as lab:
        h = lab.hosts[0]
        old_net, old_sub = "10.99.0.0/16", "10.99.3.0/24"
        h.subnet_file.write_text(f"FLANNEL_NETWORK={old_net}\nFLANNEL_SUBNET=10.99.3.1/24\nFLANNEL_MTU=1450\n"
                                 "FLANNEL_IPMASQ=true\n")
        old = ipt.masq_rules(ipaddress.IPv4Network(old_net), ipaddress.IPv4Network(old_sub), True)
        payload = "*nat\n:FLANNEL-POSTRTG - [0:0]\n" + "\n".join(r.line() for r in old) + \
            "\n-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE\nCOMMIT\n"
        sh(["iptables-restore", "--noflush"], ns=h.ns, input=payload)
        h.extra_args = ["--ip-masq"]
        lab.start_node(h)
        rules = sh(["iptables-save", "-t", "nat"], ns=h.ns).stdout
        assert old_net not in rules and old_sub not in rules, rules
        assert f"-s {h.subnet} -d {lab.network}" in rules
        assert "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE" in rules  # someone else's rule stays
        assert rules.count("-j FLANNEL-POSTRTG") == 1


def test_iface_selection_like_flanneld():
    """--iface list (first that exists), --iface-regex (addresses, then names), --iface-can-reach."""
    with Lab(["plain", "plain"]) as lab:
        h = lab.hosts[0]
        code = ("import sys, json; from vxlan import netconf\n"
                "cases = json.loads(sys.argv[1]); out = []\n"
                "for c in cases:\n"
                "    try:\n"
                "        i = netconf.find_iface(tuple(c.get('iface', ())), None, tuple(c.get('regex', ())),"
                " c.get('reach'))\n"
                "        out.append([i.name, i.address])\n"
                "    except netconf.NetconfError as e:\n"
                "        out.append(['error', str(e)])\n"
                "print(json.dumps(out))\n")
        cases = [{"iface": ["nosuch0", "eth0"]}, {"iface": [h.public_ip]}, {"regex": [r"^198\.18\."]},
                 {"regex": ["^eth"]}, {"reach": lab.hosts[1].public_ip}, {"iface": ["nosuch0"]},
                 {"regex": ["^nomatch$"]}, {"iface": ["nosuch0"], "regex": ["^eth"]}]
        got = json.loads(sh([sys.executable, "-c", code, json.dumps(cases)], ns=h.ns).stdout)
        assert got[:5] == [["eth0", h.public_ip]] * 5, got
        assert got[5][0] == "error" and "matches the interfaces and/or regexes" in got[5][1] \
            and "--iface nosuch0" in got[5][1]
        assert got[6][0] == "error" and "--iface-regex ^nomatch$" in got[6][1]
        assert got[7] == ["eth0", h.public_ip]  # no --iface matched: the regexes are tried next


def test_no_iptables_on_the_host(tmp_path):
    """Minimal hosts may lack iptables: the default forward rules are skipped with an error
    (as flanneld does) and the node still joins; an explicit --ip-masq refuses to start."""
    (tmp_path / "ip").symlink_to(shutil.which("ip"))  # PATH with no iptables at all
    with Lab(["vxland", "vxland"], registry="etcd", defer=(1,), env={"PATH": str(tmp_path)}) as lab:
        h1, h2 = lab.hosts
        h1.extra_args = ["--iptables-forward-rules=true"]
        lab.start_node(h1)
        assert "forward rules not installed" in lab.log(h1) and "apt-get install iptables" in lab.log(h1)
        assert lab.ping(h1, h2, count=2).returncode == 0
        assert http_status(lab, h1, "/readyz") == 200
        lab.stop_vxland(h1)
        h1.extra_args = ["--ip-masq"]
        with pytest.raises(LabError):
            lab.start_node(h1, wait_s=8)
        assert h1.proc is not None and h1.proc.wait(5) == 1
        assert "--ip-masq: iptables: iptables is not installed" in lab.log(h1)


def test_blackhole_route_for_our_subnet():
    """--ip-blackhole-route: our subnet gets a blackhole route behind the pod link's own route,
    so a packet for an unused address of it is dropped here instead of looping into the tunnel."""
    with Lab(["vxland", "vxland"], registry="etcd", defer=(1,)) as lab:
        h1, h2 = lab.hosts
        h1.extra_args = ["--ip-blackhole-route"]
        lab.start_node(h1)
        blackholes = sh(["ip", "route", "show", "type", "blackhole"], ns=h1.ns).stdout
        assert f"blackhole {h1.subnet} proto static metric 4096" in blackholes, blackholes
        assert lab.ping(h2, h1, count=2).returncode == 0  # the pod link's route still wins
        sh(["ip", "link", "set", "pod", "down"], ns=h1.ns)  # pod network gone: the blackhole answers
        get = sh(["ip", "route", "get", str(h1.subnet.network_address + 9)], ns=h1.ns, check=False)
        assert "blackhole" in get.stdout or "Invalid argument" in get.stderr, (get.stdout, get.stderr)


def test_rules_of_flanneld_0_17_are_replaced_not_doubled():
    """A host where flanneld <= 0.19 ran keeps its rules directly in POSTROUTING and FORWARD
    (flannel v0.17.0 network/iptables.go; 0.10-0.16.1 without comments). vxland finds them for
    the Network and subnet of subnet.env and replaces them with its own chains."""
    with Lab(["vxland"], registry="etcd", defer=(1,)) as lab:
        h = lab.hosts[0]
        net, sub = "172.7.0.0/16", "172.7.9.0/24"
        h.subnet_file.write_text(f"FLANNEL_NETWORK={net}\nFLANNEL_SUBNET=172.7.9.1/24\nFLANNEL_MTU=1450\n"
                                 "FLANNEL_IPMASQ=true\n")
        c = '-m comment --comment "flanneld masq"'
        old = [f"-A POSTROUTING -s {net} -d {net} {c} -j RETURN",  # 0.17 with --random-fully
               f"-A POSTROUTING -s {net} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
               f"-A POSTROUTING ! -s {net} -d {sub} {c} -j RETURN",
               f"-A POSTROUTING ! -s {net} -d {net} {c} -j MASQUERADE --random-fully",
               f"-A POSTROUTING -s {net} ! -d 224.0.0.0/4 -j MASQUERADE"]  # 0.10: no comment, no RF
        fwd = [f'-A FORWARD -s {net} -m comment --comment "flanneld forward" -j ACCEPT',
               f"-A FORWARD -d {net} -j ACCEPT"]
        payload = "*nat\n" + "\n".join(old) + "\n-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE\nCOMMIT\n*filter\n" + \
            "\n".join(fwd) + "\nCOMMIT\n"
        sh(["iptables-restore", "--noflush"], ns=h.ns, input=payload)
        h.extra_args = ["--ip-masq", "--iptables-forward-rules=true"]
        lab.start_node(h)
        assert str(h.subnet) == sub  # the previous subnet, from subnet.env
        rules = iptables_save(lab, h, {})
        theirs = "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE"
        assert theirs in rules  # someone else's rule stays
        rules.remove(theirs)
        assert rules == expected_rules(net, sub), rules
        assert "removed 7 iptables rules flanneld <= 0.19 left" in lab.log(h)
