"""Helpers shared by the integration tests."""

from __future__ import annotations

import subprocess
import sys
import time

from vxlan.lab import sh

RECEIVER = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
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


def transfer(lab, src, dst, nbytes, seed=7, port=5001):
    """Send ``nbytes`` of seeded random data pod to pod over TCP; (sent, received) as
    [byte count, sha256] lists."""
    receiver = lab.popen(dst.pod_ns, [sys.executable, "-c", RECEIVER, dst.pod_ip, str(port)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout.readline().strip() == "listening"
        sent = sh([sys.executable, "-c", SENDER, dst.pod_ip, str(port), str(nbytes), str(seed)],
                  ns=src.pod_ns, timeout=120).stdout.split()
        received = receiver.stdout.readline().split()
        receiver.wait(30)
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    return sent, received


def wait_for(predicate, timeout=5.0, interval=0.05):
    """Poll until ``predicate()`` is true; the elapsed seconds, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    return None
