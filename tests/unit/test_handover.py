"""vxlan.handover: what a reload hands from one image to the next, by name and number."""

from __future__ import annotations

import os
import time

import pytest

from vxlan import handover
from vxlan.handover import Inherited, decode, encode


def test_round_trip():
    fds = {"tun": 5, "udp": 6, "packet": 9, "bridge-stop": 12}
    assert encode(fds) == "tun:5,udp:6,packet:9,bridge-stop:12"
    assert decode(encode(fds)) == fds
    assert decode("") == {}


@pytest.mark.parametrize("text, why", [
    ("tun=5", "is not NAME:FD"),
    ("nope:5", "is not NAME:FD"),
    ("tun:x", "is not NAME:FD"),
    ("tun:1", "is not NAME:FD"),  # stdin/stdout/stderr are never handed over
    ("tun:5,tun:6", "tun twice"),
])
def test_what_does_not_parse(text, why):
    with pytest.raises(ValueError, match=why):
        decode(text)


def test_from_env_takes_the_variables_away_and_skips_what_is_not_open():
    r, w = os.pipe()
    try:
        env = {handover.FDS_ENV: f"tun:{r},udp:{w},packet:999", handover.BRIDGE_ENV: "4242", "OTHER": "x"}
        got = Inherited.from_env(env)
        assert env == {"OTHER": "x"}  # no child of ours sees them
        assert got.reload and got.bridged and got.bridge_pid == 4242
        assert got.fds == {"tun": r, "udp": w}  # 999 is not open: dropped, opened anew later
        os.set_inheritable(r, True)
        assert got.take("tun") == r and not os.get_inheritable(r)  # ours now, no child's
        assert got.take("tun") is None
        got.close_rest()  # udp was not taken: closed
        with pytest.raises(OSError):
            os.fstat(w)
        assert got.reload  # still a reload, after all was taken
    finally:
        os.close(r)


def test_a_fresh_start_and_garbage_are_no_reload():
    assert not Inherited.from_env({}).reload
    env = {handover.FDS_ENV: "garbage"}
    assert not Inherited.from_env(env).reload and env == {}


def test_stop_bridge_signals_and_waits_for_its_word():
    stop, done = os.eventfd(0), os.eventfd(0)
    os.eventfd_write(done, 1)  # as the bridge writes it once its loops have left
    got = Inherited({"bridge-stop": stop, "bridge-done": done})
    started = time.monotonic()
    got.stop_bridge()
    assert time.monotonic() - started < handover.BRIDGE_STOP_S / 2
    assert got.fds == {} and got.bridge_pid is None
    for fd in (stop, done):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_systemds_store_comes_back_by_name():
    env = {"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "tun:udp", "KEEP": "1"}
    assert handover._listen_fds(env, 4242) == {"tun": 3, "udp": 4}  # sd_listen_fds: from 3 on
    assert env == {"KEEP": "1"}
    # for another process (LISTEN_PID is not ours), or no count: nothing, and nothing closed
    assert handover._listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "tun:udp"}, 4242) == {}
    assert handover._listen_fds({"LISTEN_PID": "4242", "LISTEN_FDNAMES": "tun"}, 4242) == {}


def test_store_fds_sends_each_with_its_name(tmp_path):
    import socket

    from vxlan import sdnotify

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        r, w = os.pipe()
        try:
            assert sdnotify.store_fds({"tun": r, "udp": w}, {"NOTIFY_SOCKET": str(path)}) == 2
            got = []
            for _ in range(2):
                data, fds, _, _ = socket.recv_fds(manager, 1024, 4)
                got.append(data.decode())
                assert len(fds) == 1 and os.path.sameopenfile(fds[0], r if "tun" in data.decode() else w)
                os.close(fds[0])
            assert got == ["FDSTORE=1\nFDNAME=tun", "FDSTORE=1\nFDNAME=udp"]
        finally:
            os.close(r)
            os.close(w)
    assert sdnotify.store_fds({"tun": 0}, {}) == 0  # not under systemd: nothing sent
