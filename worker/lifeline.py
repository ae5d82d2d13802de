"""A worker started by `pqz serve` or `pqz worker` ends with the process that started it.

Killed with SIGKILL, that process runs no cleanup; its workers would go on taking jobs, and the
next `pqz serve` would start a second "only" worker beside them. The launcher names itself in
PQZ_PARENT_PID and starts each worker in a process group of its own. A thread of the worker's
main process watches for the launcher's death, and then stops the group as the launcher would
have: SIGTERM to Celery (a warm shutdown) and to the process running a job, which puts the job
back in the queue at its next step (worker/pipeline.py). That process watches Celery's main
process the same way, in case it is the one killed.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

POLL_S = 1.0


def hold() -> None:
    """In the worker's main process: stop its group when the launcher dies (a no-op without
    PQZ_PARENT_PID, which is taken out of the environment: its children have other parents)."""
    parent = os.environ.pop("PQZ_PARENT_PID", None)
    if parent is not None:
        _watch(int(parent), lambda: os.killpg(os.getpgrp(), signal.SIGTERM))


def hold_parent() -> None:
    """In a pool process: stop (SIGTERM to itself) when the worker's main process dies."""
    _watch(os.getppid(), lambda: os.kill(os.getpid(), signal.SIGTERM))


def _watch(parent: int, then: Callable[[], None]) -> None:
    def run() -> None:
        while os.getppid() == parent:  # a dead parent's children are adopted by another
            time.sleep(POLL_S)
        then()

    threading.Thread(target=run, name="lifeline", daemon=True).start()
