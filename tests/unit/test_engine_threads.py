"""The engine threads' name, scheduling policy and nice value (vxlan.dataplane.tune_engine_thread)."""

from __future__ import annotations

import os
import threading

import pytest

from vxlan.dataplane import tune_engine_thread


@pytest.mark.parametrize("sched,policy", [("other", os.SCHED_OTHER), ("batch", os.SCHED_BATCH)])
def test_names_the_thread_and_sets_its_policy_and_nice_value(sched, policy):
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    try:
        tid = thread.native_id
        assert tune_engine_thread(tid, "vxland-test", 5, sched) == []  # raising nice needs no privilege
        with open(f"/proc/self/task/{tid}/comm") as f:
            assert f.read().strip() == "vxland-test"
        assert os.sched_getscheduler(tid) == policy
        assert os.getpriority(os.PRIO_PROCESS, tid) == 5
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 5  # only that thread
    finally:
        release.set()
        thread.join()


def test_the_default_policy_preempts():
    """SCHED_OTHER by default: a SCHED_BATCH thread woken by a packet waits for the running
    task's time slice (4 ms per hop on a busy host, see tune_engine_thread)."""
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    try:
        assert tune_engine_thread(thread.native_id, "vxland-test", 5) == []
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_OTHER
    finally:
        release.set()
        thread.join()


def test_what_cannot_be_done_is_reported_not_raised():
    with open("/proc/sys/kernel/pid_max") as f:
        gone = int(f.read()) + 1  # no thread can have this id: every step fails
    problems = tune_engine_thread(gone, "vxland-gone", -10, "batch")
    assert len(problems) == 3, problems
    assert problems[2].startswith("nice -10:") and "CAP_SYS_NICE" in problems[2]
