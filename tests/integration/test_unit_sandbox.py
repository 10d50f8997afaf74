"""contrib/vxland.service's sandbox, as far as it can be tried without systemd as PID 1 (this
machine has none): every system call vxland and the iptables it runs make is in the unit's
SystemCallFilter, and a node runs its whole life (etcd lease, --ip-masq rules, forwarding,
a capture toggled by SIGUSR1, a clean stop) on a read-only file system but for its writable
paths, with only the unit's capabilities and no_new_privs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import MB, kernel_has_tunnel_gso, transfer, wait_for
from vxlan.lab import Lab, sh

ROOT = Path(__file__).resolve().parents[2]
UNIT = (ROOT / "contrib" / "vxland.service").read_text()


def unit_setting(name: str) -> str:
    found = re.findall(rf"^{name}=(.*)$", UNIT, re.M)
    assert found, f"{name} is not in contrib/vxland.service"
    return found[-1].strip()


def syscall_group(group: str) -> set[str]:
    """The system calls of a systemd syscall group, nested groups expanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = line.strip()
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())

    def expand(name: str) -> set[str]:
        return set().union(*({item} if not item.startswith("@") else expand(item) for item in groups[name]))
    return expand(group)


def daemon_pid(pid: int) -> int:
    """vxland's PID under the node's wrapper: strace's child; a sandbox execs into it."""
    while Path(f"/proc/{pid}/comm").read_text().strip() == "strace":
        pid = int(Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0])
    return pid


def exercise(lab: Lab, node, peer) -> None:
    """A node's whole life: forwarding both ways, bulk TCP (the offload paths), a capture
    stopped and started by SIGUSR1, then SIGTERM and a clean exit."""
    assert lab.ping(node, peer, count=2, interval=0.05).returncode == 0
    assert lab.ping(peer, node, count=2, interval=0.05).returncode == 0
    sent, received = transfer(lab, node, peer, 2 * MB)
    assert received == sent
    pid = daemon_pid(node.proc.pid)
    os.kill(pid, signal.SIGUSR1)
    assert wait_for(lambda: "capture off" in lab.log(node), timeout=5)
    os.kill(pid, signal.SIGUSR1)
    assert wait_for(lambda: lab.log(node).count("capture on") == 2, timeout=5)
    os.kill(pid, signal.SIGTERM)
    assert node.proc.wait(30) == 0, lab.log(node)[-2000:]


def test_every_system_call_is_in_the_units_filter():
    if shutil.which("strace") is None:
        pytest.fail("strace is not installed (make install)")
    allowed = set().union(*(syscall_group(item) if item.startswith("@") else {item}
                            for item in unit_setting("SystemCallFilter").split()))
    with Lab(["vxland", "vxland"], registry="etcd", defer=(1,)) as lab:
        node, peer = lab.hosts
        summary = lab.workdir / "strace.txt"
        node.wrap = ["strace", "-f", "-qq", "-c", "-o", str(summary)]
        node.extra_args = ["--ip-masq", "--capture", str(lab.workdir / "cap.pcapng"), "--strict-source"]
        lab.start_node(node, wait_s=60)
        exercise(lab, node, peer)
        table = summary.read_text()
    used = {m.group(1) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+\d+\s+(?:\d+\s+)?(\w+)\s*$", table, re.M)}
    used.discard("total")  # the summary's last line
    print(f"{len(used)} system calls: {' '.join(sorted(used))}")
    assert {"recvmmsg", "ioctl", "sendmsg", "execve"} <= used, table  # the summary was read right
    assert used - allowed == set(), f"outside {unit_setting('SystemCallFilter')}: {sorted(used - allowed)}"


# Emulates ProtectSystem=strict (every mount read-only) with the unit's writable paths (here
# the lab's workdir stands for /run/flannel and /var/log/vxland) and ReadWritePaths, then the
# unit's capability bounding set and NoNewPrivileges; "$@" is vxland's command.
SANDBOX = r"""
set -e
work=$1; shift
touch /run/xtables.lock
for path in "$work" /run/xtables.lock; do mount --bind "$path" "$path"; done
findmnt -rno TARGET | sort -u | while read -r target; do
  case "$target" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$work"|/run/xtables.lock) ;;
    *) mount -o remount,bind,ro "$target" 2>/dev/null || true ;;
  esac
done
touch /usr/vxland-probe 2>/dev/null && { echo "the root is still writable"; exit 99; }
exec setpriv --no-new-privs --bounding-set "$CAPS" "$@"
"""


def test_a_node_lives_in_the_units_sandbox():
    caps = unit_setting("CapabilityBoundingSet").lower().replace("cap_", "").split()
    assert unit_setting("ProtectSystem") == "strict" and unit_setting("NoNewPrivileges") == "yes"
    with Lab(["vxland", "vxland"], registry="etcd", defer=(1,)) as lab:
        node, peer = lab.hosts
        lab.env["CAPS"] = "-all," + ",".join(f"+{c}" for c in caps)
        node.wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c", SANDBOX, "sandbox", str(lab.workdir)]
        node.extra_args = ["--ip-masq", "--capture", str(lab.workdir / "cap.pcapng")]
        lab.start_node(node, wait_s=60)
        status = Path(f"/proc/{node.proc.pid}/status").read_text()
        # CAP_NET_ADMIN (12), CAP_NET_RAW (13), CAP_SYS_NICE (23), CAP_BPF (39)
        assert "NoNewPrivs:\t1" in status and "CapBnd:\t0000008000803000" in status, status
        assert "FLANNEL-POSTRTG" in sh(["iptables-save", "-t", "nat"], ns=node.ns).stdout
        exercise(lab, node, peer)
        log = lab.log(node)
        assert "Traceback" not in log and "Read-only file system" not in log, log[-3000:]
        assert ("tunnel-gso," in log) == kernel_has_tunnel_gso(), log  # CAP_BPF is enough for it
        assert node.subnet_file.read_text().startswith("FLANNEL_NETWORK=")

