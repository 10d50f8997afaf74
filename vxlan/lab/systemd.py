"""A stand-in for systemd's file-descriptor store (sd_notify FDSTORE=1, sd_listen_fds): systemd
does not run on the lab's machines. It receives what a node stores at READY and starts the node
again with it, as Restart= or ``systemctl restart`` would."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

# What systemd does between fork and exec of the service: the stored descriptors at 3, 4, ...
# and the variables that say what they are (sd_listen_fds(3)); LISTEN_PID is the service's.
STAND_IN_EXEC = """
import fcntl, os, sys
fds = [int(f) for f in sys.argv[1].split(",")]
high = [fcntl.fcntl(f, fcntl.F_DUPFD, 100) for f in fds]  # out of the way of 3, 4, ... first
for i, f in enumerate(high):
    os.dup2(f, 3 + i)  # (inheritable)
    os.close(f)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(fds)), LISTEN_FDNAMES=sys.argv[2])
os.execvp(sys.argv[3], sys.argv[3:])
"""


class FdStore:
    """The notify socket of one service and the descriptors it stored, by FDNAME."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.stored: dict[str, int] = {}

    def receive(self, timeout: float = 20.0) -> dict[str, int]:
        """FDSTORE=1 messages (and their descriptors) until READY=1 (vxland stores first)."""
        self.sock.settimeout(timeout)
        ready = False
        while not ready:
            data, fds, _, _ = socket.recv_fds(self.sock, 4096, 8)
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            ready = fields.get("READY") == "1"
            if fields.get("FDSTORE") == "1" and len(fds) == 1:
                old = self.stored.pop(fields["FDNAME"], None)
                if old is not None:
                    os.close(old)
                self.stored[fields["FDNAME"]] = fds[0]
            else:
                for fd in fds:
                    os.close(fd)
        return self.stored

    def start(self, lab, host, cmd: list[str], log_path: Path) -> subprocess.Popen:
        """Start ``cmd`` (the node's command) in the host's namespace with the store given back."""
        names = list(self.stored)
        fds = [self.stored[n] for n in names]
        with open(log_path, "ab") as log:
            return lab.popen(host.ns, [sys.executable, "-c", STAND_IN_EXEC, ",".join(map(str, fds)), ":".join(names),
                                       *cmd], pass_fds=fds, stdout=log, stderr=subprocess.STDOUT)

    def close(self) -> None:
        for fd in self.stored.values():
            os.close(fd)
        self.stored.clear()
        self.sock.close()
