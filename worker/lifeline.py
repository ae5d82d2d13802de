"""A worker started by `pqz serve` or `pqz worker` ends with the process that started it.

Killed with SIGKILL, that process runs no cleanup; its workers would go on taking jobs, and the
next `pqz serve` would start a second "only" worker beside them. Linux's parent-death signal
ends them instead; the launcher names itself in PQZ_PARENT_PID.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def hold() -> None:
    """Ask for SIGTERM when the launcher dies (Linux; elsewhere nothing happens). The variable
    is taken out of the environment: processes this one starts have other parents."""
    parent = os.environ.pop("PQZ_PARENT_PID", None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the launcher died before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)
