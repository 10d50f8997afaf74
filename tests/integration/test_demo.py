"""`vxlanctl demo` (what `make demo` runs) works end to end and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("extra", [[], ["--etcd-api", "v2"], ["--static"], ["--ipv6-only"]],
                         ids=["etcd", "etcd-v2", "static", "ipv6-only"])
def test_demo(extra, kernel_vxlan):
    demo = subprocess.Popen([sys.executable, "-m", "vxlan.ctl", "demo", "--seconds", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
    proc = subprocess.CompletedProcess(demo.args, demo.returncode, out, err)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all pairs reachable" in proc.stdout
    assert proc.stdout.count("Gbit/s") == 4
    assert "h3 kernel" in proc.stdout
    if "--ipv6-only" in extra:  # pings and iperf3 over IPv6 alone
        assert "over IPv4" not in proc.stdout and "ping pod to pod over IPv6" in proc.stdout
    assert "lab torn down" in proc.stdout
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"vxl-{demo.pid}-" not in listed  # the demo's own (other test workers may have theirs)
