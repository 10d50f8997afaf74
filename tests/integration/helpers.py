"""Helpers shared by the integration tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vxlan.lab import sh, stop_process
from vxlan.registry.etcd import EtcdRegistry
from vxlan.registry.select import EtcdSettings, open_store


def kernel_has_tunnel_gso() -> bool:
    """UDP tunnel GSO on TUN/TAP (TUN_F_UDP_TUNNEL_GSO) came with Linux 6.17."""
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= (6, 17)


RECEIVER = """
import hashlib, socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), family=family)
print("listening", flush=True)
conn, _ = srv.accept()
h, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    h.update(chunk); n += len(chunk)
print(n, h.hexdigest(), flush=True)
"""

SENDER = """
import hashlib, random, socket, sys
rng, h = random.Random(int(sys.argv[4])), hashlib.sha256()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30) as s:
    left = int(sys.argv[3])
    while left:
        chunk = rng.randbytes(min(left, 1 << 16)); h.update(chunk); s.sendall(chunk); left -= len(chunk)
print(int(sys.argv[3]), h.hexdigest(), flush=True)
"""

MB = 1 << 20


def transfer(lab, src, dst, nbytes, seed=7, port=5001, ipv6=False):
    """Send ``nbytes`` of seeded random data pod to pod over TCP (over IPv6 in a dual-stack
    lab with ``ipv6``); (sent, received) as [byte count, sha256] lists."""
    address = dst.pod_ip6 if ipv6 else dst.pod_ip
    receiver = lab.popen(dst.pod_ns, [sys.executable, "-c", RECEIVER, address, str(port)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "listening"
        sent = sh([sys.executable, "-c", SENDER, address, str(port), str(nbytes), str(seed)],
                  ns=src.pod_ns, timeout=120).stdout.split()
        received = receiver.stdout.readline().split()
        receiver.wait(30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return sent, received


def outer_source_ports(lab, sender, receiver, flows: int, ipv6: bool = False) -> set[str]:
    """The outer UDP source ports of sender's VXLAN datagrams as the receiving node's tcpdump
    sees them on its underlay while ``flows`` parallel TCP flows run sender -> receiver."""
    src = sender.public_ipv6 if ipv6 else sender.public_ip
    dump = lab.popen(receiver.ns, ["tcpdump", "-l", "-nn", "-c", "4000", "-i", "eth0",
                                   f"src host {src} and udp dst port {lab.port}"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)
        lab.iperf3(sender, receiver, 2, "-P", str(flows), ipv6=ipv6)
    finally:
        dump.terminate()
    return {line.split(" > ")[0].rsplit(".", 1)[1] for line in dump.stdout.read().splitlines() if " > " in line}


def wait_for(predicate, timeout=5.0, interval=0.05):
    """Poll until ``predicate()`` is true; the elapsed seconds, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalEtcd:
    """A real etcd on loopback, both keyspaces served unless ``enable_v2`` is False; ``tls``
    names a directory with ca.crt, server.crt/key (then clients must present client.crt/key)."""

    def __init__(self, workdir: Path, enable_v2: bool = True, tls: Path | None = None) -> None:
        if shutil.which("etcd") is None:
            raise AssertionError("etcd is not installed (make install)")
        client, peer = free_port(), free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{client}"
        self.tls = tls
        cmd = ["etcd", "--data-dir", str(workdir / "data"), "--listen-client-urls", self.url,
               "--advertise-client-urls", self.url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
               "--initial-cluster", f"default=http://127.0.0.1:{peer}",
               "--heartbeat-interval", "10", "--election-timeout", "100", f"--enable-v2={str(enable_v2).lower()}"]
        if tls:
            cmd += ["--cert-file", str(tls / "server.crt"), "--key-file", str(tls / "server.key"),
                    "--trusted-ca-file", str(tls / "ca.crt"), "--client-cert-auth"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = wait_for(lambda: self.etcdctl("endpoint", "health", check=False).returncode == 0, timeout=20)
        if ok is None:
            self.stop()
            raise AssertionError("etcd did not start")

    def etcdctl(self, *args: str, check: bool = True, api: str = "v3") -> subprocess.CompletedProcess[str]:
        tls = []
        if self.tls:
            names = ("--cacert", "--cert", "--key") if api == "v3" else ("--ca-file", "--cert-file", "--key-file")
            tls = [names[0], str(self.tls / "ca.crt"), names[1], str(self.tls / "client.crt"), names[2],
                   str(self.tls / "client.key")]
        return subprocess.run(["env", f"ETCDCTL_API={api[1]}", "etcdctl", "--endpoints", self.url, *tls, *args],
                              capture_output=True, text=True, check=check)

    def put(self, key: str, value: str, api: str = "v3") -> None:
        self.etcdctl("set" if api == "v2" else "put", key, value, api=api)

    def delete(self, key: str, api: str = "v3") -> None:
        self.etcdctl("rm" if api == "v2" else "del", key, api=api)

    def v2_node(self, key: str) -> dict:
        """The v2 store's node for ``key`` (value, ttl, indices) over HTTP."""
        with urllib.request.urlopen(f"{self.url}/v2/keys{key}", timeout=5) as resp:
            return json.load(resp)["node"]

    def registry(self, api: str, **kw) -> EtcdRegistry:
        settings = EtcdSettings(self.url)
        return EtcdRegistry(open_store(settings, api), **kw)

    def stop(self) -> None:
        stop_process(self.proc)


PEER_ADDR_SERVER = """
import socket, sys
family = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
srv = socket.create_server(("::" if sys.argv[2] == "6" else "0.0.0.0", int(sys.argv[1])), family=family)
print("listening", flush=True)
conn, addr = srv.accept()
conn.sendall(addr[0].encode())
conn.close()
"""
PEER_ADDR_CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.recv(64).decode())
"""


def seen_source(lab, client_ns: str, server_ns: str, server_ip: str, port: int = 9000) -> str:
    """The source address a TCP server in ``server_ns`` sees for a client in ``client_ns``
    (over IPv6 when ``server_ip`` is an IPv6 address)."""
    family = "6" if ":" in server_ip else "4"
    srv = lab.popen(server_ns, [sys.executable, "-c", PEER_ADDR_SERVER, str(port), family], stdout=subprocess.PIPE,
                    text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "listening"
        return sh([sys.executable, "-c", PEER_ADDR_CLIENT, server_ip, str(port)], ns=client_ns).stdout.strip()
    finally:
        stop_process(srv)
