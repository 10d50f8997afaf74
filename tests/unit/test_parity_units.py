"""Pure parts of the flanneld drop-in: the iptables rule text and transactions, log folding,
sd_notify."""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import socket

from vxlan import iptables, logfmt, sdnotify

NET, SUB = ipaddress.IPv4Network("10.5.0.0/16"), ipaddress.IPv4Network("10.5.7.0/24")


def test_masq_rules_are_flanneld_s_in_order():
    lines = [r.line() for r in iptables.masq_rules(NET, SUB, random_fully=False)]
    m = '-m comment --comment "flanneld masq"'
    assert lines == [
        f"-A POSTROUTING {m} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s 10.5.7.0/24 -d 10.5.0.0/16 {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s 10.5.0.0/16 -d 10.5.7.0/24 {m} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.7.0/24 {m} -j RETURN",
        f"-A FLANNEL-POSTRTG -s 10.5.0.0/16 ! -d 224.0.0.0/4 {m} -j MASQUERADE",
        f"-A FLANNEL-POSTRTG ! -s 10.5.0.0/16 -d 10.5.0.0/16 {m} -j MASQUERADE",
    ]
    assert iptables.masq_rules(NET, SUB, random_fully=True)[-1].line().endswith("-j MASQUERADE --random-fully")


def test_restore_payload_deletes_existing_then_appends_all():
    rules = iptables.forward_rules(NET)
    payload = iptables.restore_payload(rules, existing={rules[0]})
    lines = payload.splitlines()
    assert lines[0] == "*filter" and lines[-1] == "COMMIT"
    assert lines[1].startswith("-D FORWARD") and [ln[:2] for ln in lines[2:-1]] == ["-A"] * 3
    assert iptables.restore_payload(rules, existing=set(), append=False) == ""


def test_random_fully_needs_iptables_1_6_2():
    assert iptables.version_has_random_fully("iptables v1.8.9 (nf_tables)")
    assert not iptables.version_has_random_fully("iptables v1.6.1")
    assert iptables.flavour("iptables v1.8.9 (legacy)") == "legacy"


def test_repeats_are_folded_and_counted():
    now = [0.0]
    flt = logfmt.RepeatFilter(window_s=10, clock=lambda: now[0])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(flt)
    log = logging.getLogger("vxland.test.repeat")
    log.propagate = False
    log.addHandler(handler)
    try:
        for _ in range(5):
            log.warning("etcd down: %s", "refused")
        log.warning("something else")
        now[0] = 11.0
        log.warning("etcd down: %s", "refused")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == ["etcd down: refused", "something else",
                     "etcd down: refused (and 4 identical messages in the last 10 s)"]


def test_json_log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logfmt.JsonFormatter())
    record = logging.LogRecord("vxland", logging.ERROR, __file__, 1, "peer %s failed", ("10.5.1.0/24",), None)
    handler.emit(record)
    doc = json.loads(stream.getvalue())
    assert (doc["level"], doc["logger"], doc["message"]) == ("error", "vxland", "peer 10.5.1.0/24 failed")


def test_sd_notify_sends_one_datagram(tmp_path):
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        assert sdnotify.notify("READY=1\nSTATUS=ok", env={"NOTIFY_SOCKET": str(path)})
        assert listener.recv(100) == b"READY=1\nSTATUS=ok"
    assert not sdnotify.notify("READY=1", env={})
