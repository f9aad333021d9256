"""Children of the local stack end when the process that started them dies, however it dies.

`imgpipe dev` stops its children by PID on Ctrl-C, SIGTERM and a closed terminal. A SIGKILL of `imgpipe dev`
alone (``kill -9``, the OOM killer, a process manager giving up on it) cannot be handled: before, its
children, each in a session of its own, ran on — the broker, the code server, Dagster's webserver and
daemon (still launching runs), the web app — holding their ports, so the next `imgpipe dev` refused to
start until someone found and killed them. Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``, kept
across ``exec``) now sends each of them SIGTERM the moment its parent goes; each stops as it would on
SIGTERM, and their own children follow (the code server's forkserver and image worker server stop when
their pipe to it closes).

The signal is tied to the *thread* that started the child: a child started from a thread that ends would
be stopped with it. So it is set only for children started from the main thread (all of `imgpipe dev`'s,
and the test servers' in conftest). Elsewhere, or off Linux, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
    _prctl = None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process dies. None (no
    ``preexec_fn``) where that cannot be promised."""
    if _prctl is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:  # in the child, between fork and exec: nothing that allocates much or locks
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os.kill(os.getpid(), sig)

    return preexec
