"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram to $NOTIFY_SOCKET.

flanneld sends READY=1 once its backend runs (main.go); a ``Type=notify`` unit waits for it, so
units ordered after vxland (a CNI runtime, docker with mk-docker-opts) start only once
subnet.env is written and the data plane forwards.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, env: dict[str, str] | None = None, fds: list[int] = ()) -> bool:
    """Send ``state`` (e.g. ``"READY=1\\nSTATUS=..."``), with ``fds`` attached (SCM_RIGHTS, for
    ``FDSTORE=1``); False when not run under systemd."""
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace socket
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(path)
            if fds:
                socket.send_fds(sock, [state.encode()], list(fds))
            else:
                sock.sendall(state.encode())
        except OSError:
            return False
    return True


def store_fds(named: dict[str, int], env: dict[str, str] | None = None) -> int:
    """Keep each descriptor in systemd's file-descriptor store under its name (``FDSTORE=1``,
    ``FDNAME=``; the unit needs ``FileDescriptorStoreMax=``): a later start of the service
    gets them back in ``LISTEN_FDS``/``LISTEN_FDNAMES`` (sd_pid_notify_with_fds(3)). How many
    were sent."""
    return sum(notify(f"FDSTORE=1\nFDNAME={name}", env, [fd]) for name, fd in named.items())
