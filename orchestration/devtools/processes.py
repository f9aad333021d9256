"""Process and port helpers of the local stack, its benchmarks and its tests: free ports, waiting for a port,
who holds a port, stopping a process, and children that end when their parent dies.

Children end when the process that started them dies, however it dies (``die_with_parent``): `imgpipe dev`
stops its children by PID on Ctrl-C, SIGTERM and a closed terminal, but a SIGKILL of `imgpipe dev` alone
cannot be handled. Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``, kept across ``exec``) sends each
child SIGTERM the moment its parent goes. The signal is tied to the *thread* that started the child, so it is
set only for children started from the main thread; elsewhere, or off Linux, nothing changes.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout_seconds: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_seconds:.0f} s")


class StartupFailed(RuntimeError):
    """A child of the stack did not start; the message says which, why, and ends with its own log."""


def log_tail(log_path: Path | None, lines: int = 15) -> str:
    if log_path is None:
        return "(no log)"
    try:
        text = Path(log_path).read_bytes()[-20_000:].decode("utf-8", "replace")
    except OSError:
        return f"(no log at {log_path})"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (its log is empty)"


def wait_started(proc: subprocess.Popen, name: str, ports: list[int], timeout_seconds: float,
                 log_path: Path | None = None) -> None:
    """Until ``proc`` listens on every port of 127.0.0.1. If it exits first, stop waiting at once: raise
    ``StartupFailed`` with the end of its own log (its reason), not a timeout 30 s later."""
    deadline = time.monotonic() + timeout_seconds
    waiting = list(ports)
    while waiting:
        if proc.poll() is not None:
            raise StartupFailed(f"{name} exited with code {proc.returncode} while starting. The end of its log "
                                f"({log_path}):\n{log_tail(log_path)}")
        if port_in_use("127.0.0.1", waiting[0]):
            waiting.pop(0)
            continue
        if time.monotonic() > deadline:
            stop_process(proc)
            raise StartupFailed(f"{name} did not listen on 127.0.0.1:{waiting[0]} within {timeout_seconds:.0f} s. "
                                f"The end of its log ({log_path}):\n{log_tail(log_path)}")
        time.sleep(0.1)


def port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str:
    """Who listens on TCP ``port``, as 'pid N (command line)', read from /proc; or a neutral phrase when
    the process is not visible to this user."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                try:
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    cmd = "?"
                return f"pid {pid} ({cmd[:120]})"
    return "another program (not visible to this user)"


def stop_process(proc: subprocess.Popen, *, sig: int = signal.SIGTERM, timeout_seconds: float = 10.0) -> None:
    """Stop a process we started (by PID), escalating to SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass
