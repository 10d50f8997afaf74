"""Long-lived tasks that outlive their own faults.

An exception nobody expected in the registry watch, the lease renewal, a route check or a
rules resync must neither end the daemon nor leave it running with the task dead behind a
healthy ``/healthz`` (issue #12: a poison lease killed the registry follower that way). Each
task is logged with its traceback, counted (``vxland_task_failures_total``) and started again
after a backoff: forwarding goes on with what is known meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("vxland")
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 30.0  # doubling from the first to the second


class Supervisor:
    """Starts tasks, restarts them when they fail, cancels them all at the end."""

    def __init__(self) -> None:
        self.failures = 0
        self._tasks: list[asyncio.Task] = []

    def start(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task:
        task = asyncio.create_task(self.supervised(name, run), name=name)
        self._tasks.append(task)
        return task

    def cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()

    async def supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run ``run`` until it returns by itself (nothing left to do) or is cancelled."""
        backoff = BACKOFF_MIN_S
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("the %s task failed; starting it again in %.0f s (forwarding goes on)", name, backoff)
            if time.monotonic() - started > BACKOFF_MAX_S:
                backoff = BACKOFF_MIN_S  # it had run well for a while: a fresh fault
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
