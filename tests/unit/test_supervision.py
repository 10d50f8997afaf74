"""The daemon's long-lived tasks are supervised: an unexpected exception is logged, counted and
the task starts again (issue #12: a dead registry follower used to hide behind /healthz 200)."""

from __future__ import annotations

import asyncio
import logging

from vxlan import daemon, supervise


class Registry:
    name = "fake"

    def metrics(self) -> dict[str, float]:
        return {}


def test_a_failing_task_is_logged_counted_and_started_again(monkeypatch, caplog):
    monkeypatch.setattr(supervise, "BACKOFF_MIN_S", 0.01)
    d = daemon.Daemon(daemon.Options(), Registry())
    runs = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RecursionError("maximum recursion depth exceeded")  # what a poison lease did

    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(d.tasks.supervised("registry watch", flaky), 5))
    assert len(runs) == 3 and d.tasks.failures == 2
    assert d._registry_metrics()["task_failures_total"] == 2
    failed = [r for r in caplog.records if "the registry watch task failed" in r.getMessage()]
    assert len(failed) == 2 and failed[0].exc_info is not None  # with its traceback


def test_cancellation_is_not_a_failure():
    d = daemon.Daemon(daemon.Options(), Registry())

    async def go():
        task = asyncio.create_task(d.tasks.supervised("route check", lambda: asyncio.sleep(60)))
        await asyncio.sleep(0.05)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
    assert asyncio.run(go()) == "cancelled" and d.tasks.failures == 0


def test_rtnl_loads_iproute_alone_and_pyroute2_still_imports():
    """vxlan.rtnl loads pyroute2's rtnetlink part without the package's every other part;
    a later plain ``from pyroute2 import IPRoute`` gets the same class."""
    import subprocess
    import sys

    code = ("import sys; from vxlan.rtnl import IPRoute; import pyroute2; from pyroute2 import IPRoute as I2; "
            "assert I2 is IPRoute and IPRoute.__module__ == 'pyroute2.iproute.linux'; "
            "assert 'pyroute2.ndb.main' not in sys.modules and 'pyroute2.ipdb' not in sys.modules; "
            "IPRoute().close(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
