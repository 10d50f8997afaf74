"""What a reload hands from one image of vxland to the next (SIGHUP; ``vxlanctl reload``).

vxland reloads by re-executing itself: same PID, same arguments, new code. What must not
close on the way goes across by number in ``VXLAND_FDS`` (``tun:5,udp:6,...``): the TUN (with
it the device, its addresses and routes, and the packets the kernel queues on it while nobody
reads) and the underlay sockets (their port, and the datagrams queued on them). While the new
image starts, a bridge forwards in its place: a child forked from the old one that runs the
compiled engine's loops on those descriptors (``Engine.bridge``, fastpath/vx_bridge.c); the
new image stops it (``bridge-stop``, an eventfd) just before it runs its own loops. Pure:
parsing and formatting here; the daemon and the backends do the I/O.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import threading
from collections.abc import MutableMapping

log = logging.getLogger("vxland")

FDS_ENV = "VXLAND_FDS"
BRIDGE_ENV = "VXLAND_BRIDGE_PID"
# what goes across: the TUN, the underlay sockets of each family, and the bridge's stop eventfd
NAMES = ("tun", "tap", "udp", "udp6", "packet", "packet6", "bridge-stop", "bridge-done")
BRIDGE_STOP_S = 2.0  # how long the bridge may take to leave its loops
START_NICE = 10  # the new image starts at this priority while the bridge forwards beside it
_nice_before: int | None = None


def yield_to_bridge(env: MutableMapping[str, str] = os.environ) -> None:
    """First thing in a reloaded image: start at a lower priority, so that importing and
    starting up does not take the CPU from the bridge (and the pods' own processes) on a small
    host; ``forwarding`` restores it."""
    global _nice_before
    if env.get(FDS_ENV) and _nice_before is None:
        _nice_before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, START_NICE)


def forwarding() -> None:
    """Our loops forward: back to the priority we started with."""
    global _nice_before
    if _nice_before is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, _nice_before)
        except OSError as exc:  # (lowering the nice value needs CAP_SYS_NICE)
            log.info("reload: staying at nice %d (%s)", START_NICE, exc.strerror)
        _nice_before = None


def encode(fds: dict[str, int]) -> str:
    """``{"tun": 5, "udp": 6}`` -> ``tun:5,udp:6``."""
    return ",".join(f"{name}:{fd}" for name, fd in fds.items())


def decode(text: str) -> dict[str, int]:
    """The inverse of ``encode``; ValueError saying what is wrong."""
    fds: dict[str, int] = {}
    for item in filter(None, text.split(",")):
        name, sep, number = item.partition(":")
        if not sep or name not in NAMES or not number.isdigit() or int(number) < 3:
            raise ValueError(f"{FDS_ENV}: {item!r} is not NAME:FD with NAME one of {', '.join(NAMES)}")
        if name in fds:
            raise ValueError(f"{FDS_ENV}: {name} twice")
        fds[name] = int(number)
    return fds


class Inherited:
    """The descriptors a reload handed over (none on a fresh start), taken one by one by
    the parts that would otherwise open them; what nobody takes is closed."""

    def __init__(self, fds: dict[str, int] | None = None, bridge_pid: int | None = None) -> None:
        self.fds = dict(fds or {})
        self.bridge_pid = bridge_pid
        self.reload = bool(self.fds)  # this start is a reload (what it took stays true of it)
        self.bridged = bridge_pid is not None  # ... with a bridge forwarding meanwhile

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] = os.environ, pid: int | None = None) -> Inherited:
        """Read (and remove, so that no child of ours sees them) what a reload left in the
        environment, or what systemd's file-descriptor store gives back (``LISTEN_FDS``,
        ``LISTEN_FDNAMES``, for ``LISTEN_PID``: after ``systemctl restart`` or a crash). A value
        that does not parse is logged and ignored: a fresh start."""
        text, bridge_pid = env.pop(FDS_ENV, ""), env.pop(BRIDGE_ENV, "")
        stored = _listen_fds(env, os.getpid() if pid is None else pid)
        if not text and stored:
            log.info("restart: systemd's file-descriptor store gave back %s", ", ".join(stored))
            return cls._checked(stored, None)
        if not text:
            return cls()
        try:
            fds = decode(text)
            bridge = int(bridge_pid) if bridge_pid else None
        except ValueError as exc:
            log.warning("reload: ignoring what the previous image handed over (%s)", exc)
            return cls()
        return cls._checked(fds, bridge)

    @classmethod
    def _checked(cls, fds: dict[str, int], bridge: int | None) -> Inherited:
        for name, fd in list(fds.items()):
            try:
                os.fstat(fd)
            except OSError:
                log.warning("reload: the %s descriptor %d was not handed over; opening it anew", name, fd)
                del fds[name]
        return cls(fds, bridge)

    def take(self, name: str) -> int | None:
        """The handed-over descriptor ``name`` (now the taker's, and no child process's), or None."""
        fd = self.fds.pop(name, None)
        if fd is not None:
            os.set_inheritable(fd, False)
        return fd

    def stop_bridge(self) -> None:
        """End the bridge (it has forwarded since the old image stopped): its loops leave at
        once, it says so (``bridge-done``) and exits; from here on the caller's loops forward.
        Called right before them. Its exit (freeing the old image's memory) is waited for
        aside: it takes longer than the loops may wait."""
        stop, done, pid = self.fds.pop("bridge-stop", None), self.fds.pop("bridge-done", None), self.bridge_pid
        self.bridge_pid = None
        if stop is not None:
            os.eventfd_write(stop, 1)
            os.close(stop)
        if done is not None:
            ready, _, _ = select.select([done], [], [], BRIDGE_STOP_S)
            os.close(done)
            if not ready and pid is not None:
                log.warning("reload: the bridge (pid %d) did not stop within %.0f s; ending it", pid, BRIDGE_STOP_S)
                os.kill(pid, signal.SIGKILL)
        if pid is not None:
            threading.Thread(target=_reap, args=(pid,), name="bridge-reaper", daemon=True).start()

    def close_rest(self) -> None:
        """Close what nobody took (a socket of a family this configuration has no more)."""
        for name, fd in self.fds.items():
            log.info("reload: %s (descriptor %d) is not needed any more; closed", name, fd)
            os.close(fd)
        self.fds.clear()


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first descriptor systemd passes


def _listen_fds(env: MutableMapping[str, str], pid: int) -> dict[str, int]:
    """What systemd passed this process (LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES), by name;
    the variables are removed. Descriptors of names vxland does not know are closed."""
    listen_pid, count, names = env.pop("LISTEN_PID", ""), env.pop("LISTEN_FDS", ""), env.pop("LISTEN_FDNAMES", "")
    if not count.isdigit() or listen_pid != str(pid):
        return {}
    fds: dict[str, int] = {}
    for i, name in enumerate(names.split(":")[: int(count)]):
        fd = SD_LISTEN_FDS_START + i
        if name in NAMES and name not in fds and not name.startswith("bridge"):
            fds[name] = fd
        else:
            log.warning("restart: systemd passed descriptor %d named %r, which is not vxland's; closed", fd, name)
            try:
                os.close(fd)
            except OSError:
                pass
    return fds


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass  # not ours (a start that was no reload of this process), or reaped already
