"""Supervision of the local stack's children: each is registered the moment its process exists (a Ctrl-C during
any start-up stops it), restarted when it exits (a crash loop stops the stack with the reason), and stopped in
order — the daemon first (it launches no more runs), then the rest, newest first. Ctrl-C, SIGTERM and a
closed terminal (SIGHUP) all stop the stack; a second Ctrl-C does not cut the shutdown short."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from orchestration.devtools import processes
from orchestration.devtools.banner import log

@dataclass
class Child:
    """One process of the stack: how to (re)start it — ``start(on_start)`` starts it, hands the process to
    ``on_start`` at once (so a Ctrl-C during its start-up stops it too) and returns once it is ready — and
    how to stop it."""

    name: str
    start: Callable[[Callable[[subprocess.Popen], None]], subprocess.Popen]
    stop: Callable[[subprocess.Popen], None] = processes.stop_process
    proc: subprocess.Popen | None = None
    ready_at: float = 0.0
    quick_exits: int = 0  # exits in a row, each within SHORT_LIFE seconds of being ready

    def _started(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def launch(self) -> subprocess.Popen:
        self.start(self._started)
        self.ready_at = time.monotonic()
        return self.proc


# A child that dies is restarted. One that keeps exiting by itself right after each start (MAX_RESTARTS
# times in a row, each within SHORT_LIFE seconds of being ready) is a crash loop that needs a person: the
# stack stops with the reason and the log to read. A child killed by a signal is always restarted.
MAX_RESTARTS, SHORT_LIFE = 5, 20.0


def supervise_once(children: list[Child], *, on_restart: Callable[[Child], None] | None = None) -> str | None:
    """Restart every child that has exited; returns why to give up, or None while all is well."""
    for child in children:
        if child.proc is None or child.proc.poll() is None:
            continue
        now = time.monotonic()
        code, pid = child.proc.returncode, child.proc.pid
        # Killed by a signal (kill -9, the OOM killer): restarted, whatever the pace. Exiting by itself
        # soon after starting, again and again: a crash loop.
        child.quick_exits = child.quick_exits + 1 if code >= 0 and now - child.ready_at < SHORT_LIFE else 0
        if child.quick_exits > MAX_RESTARTS:
            return (f"{child.name} exited with code {code} within {SHORT_LIFE:.0f} s of starting, "
                    f"{child.quick_exits} times in a row; stopping the stack (see {child.name}'s log)")
        log(f"{child.name} (pid {pid}) exited with code {code}; restarting it")
        try:
            child.launch()
            if on_restart:
                on_restart(child)
        except Exception as exc:  # it died again while starting: the next pass sees that and tries again
            log(f"{child.name} did not come back ({type(exc).__name__}: {exc}); trying again")
            continue
        log(f"{child.name} restarted: pid {child.proc.pid}")
    return None


class Supervisor:
    """The stack's children, in the order they were started."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def launch(self, child: Child) -> subprocess.Popen:
        self.children.append(child)  # registered before it starts: a Ctrl-C during its start-up stops it
        return child.launch()

    def watch(self, *, on_restart: Callable[[Child], None], every_pass: Callable[[], None]) -> int:
        """Keep the children running until a crash loop (returns 1) or a stop signal (KeyboardInterrupt)."""
        while True:
            reason = supervise_once(self.children, on_restart=on_restart)
            if reason:
                log(reason)
                return 1
            every_pass()
            time.sleep(0.5)

    def stop_all(self) -> None:
        order = sorted(self.children, key=lambda c: c.name != "Dagster daemon")
        for child in order[:1] + list(reversed(order[1:])):
            if child.proc is not None:
                child.stop(child.proc)
                log(f"stopped {child.name} (pid {child.proc.pid})")


def _terminate(signum, frame):  # SIGTERM and a closed terminal (SIGHUP) behave like Ctrl-C
    raise KeyboardInterrupt


def _already_stopping(signum, frame):  # a second Ctrl-C must not cut the shutdown short (orphans)
    try:  # os.write, not print: a handler may interrupt a print, and print is not reentrant
        os.write(sys.stderr.fileno(), b"[imgpipe dev] already stopping; each child is stopped within 30 s\n")
    except (OSError, ValueError):
        pass


@contextmanager
def stop_signals(on_exit: Callable[[], None]) -> Iterator[None]:
    """Inside: SIGINT, SIGTERM and (unless ignored, as under nohup) SIGHUP raise KeyboardInterrupt. On the way
    out, ``on_exit`` runs (stopping the children) while those signals only say the stack is already stopping;
    then the previous handlers come back.

    SIGINT stops the stack even when it was started with SIGINT ignored: a shell script's `imgpipe dev &`
    starts it that way, and Python then never raises KeyboardInterrupt. SIGHUP is left alone under nohup,
    which ignores it on purpose; otherwise a closed terminal stops the stack properly instead of killing
    this process alone."""
    sigs = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    previous = {sig: signal.signal(sig, _terminate) for sig in sigs}
    try:
        yield
    finally:
        for sig in sigs:
            signal.signal(sig, _already_stopping)
        try:
            on_exit()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
