"""Worker processes that run ``process_image`` under hard limits.

Why processes and not threads: a thread cannot be stopped. A decoder stuck in a hostile file, or one
that allocates without bound, would hold the batch run hostage. Each worker here is a separate process
with an address-space cap (``RLIMIT_AS``, ``Limits.memory_limit_mb``); the parent gives each image
``Limits.timeout_seconds`` and kills the worker when it runs over, or notices when it dies (a decoder
crash, the kernel's OOM killer), records that image as rejected with a reason, and starts a fresh worker.
Pillow releases the GIL in decode, resize and encode, so throughput per core is the same as threads.

Memory stays bounded by the number of workers: the parent asks for an image's bytes (``load``) only
when a worker is free, and hands each result to ``on_result`` before taking the next.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import types
import time
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, wait
from typing import Callable, Iterable, Iterator

from assets.core.config import CoreConfig
from assets.core.decode import ImageRejected
from assets.core.process import ProcessedImage, process_image


@dataclass
class Outcome:
    key: str
    image: ProcessedImage | None = None
    rejection: ImageRejected | None = None
    seconds: float = 0.0
    peak_rss_mb: float | None = None


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is not inherited across exec."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PR_SET_NO_NEW_PRIVS = 38  # <linux/prctl.h>


def no_new_privileges() -> bool:
    """``prctl(PR_SET_NO_NEW_PRIVS, 1)``: from here on nothing this process runs can gain privileges (a setuid
    program, file capabilities), so a decoder exploit is held to the worker's own uid and rights. Inherited by
    children and irreversible. Linux only; returns whether it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _worker_main(conn: Connection, config: CoreConfig) -> None:
    import resource
    import warnings

    no_new_privileges()

    # Decoders warn about every oddity of hostile files; the outcome (processed or rejected with a
    # reason) is what counts, and it is reported per image.
    warnings.simplefilter("ignore")

    limit = config.limits.memory_limit_mb * 1024 * 1024
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass  # not permitted here: the timeout still applies
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        key, data = task
        try:
            result = ("ok", process_image(data, config))
        except ImageRejected as exc:
            result = ("rejected", exc)
        except MemoryError:
            result = ("rejected", ImageRejected("too_large_to_decode", "processing exceeded the worker's memory limit"))
        except Exception as exc:  # a decoder bug: this image is rejected, the worker lives on
            # (the decoder's own message stays out of what users see: it can name internals)
            result = ("rejected", ImageRejected("processing_error", f"the image could not be processed "
                                                                    f"({type(exc).__name__})"))
        del data
        try:
            conn.send((key, result, peak_rss_mb()))
        except MemoryError:
            conn.send((key, ("rejected", ImageRejected("too_large_to_decode", "result too large")), peak_rss_mb()))


# The environment an image worker starts with: enough to run Python, nothing else. A decoder exploit in a
# worker must not find the run's credentials (Cosmos key, connection strings, tokens) in its environment
# (/proc/<pid>/environ) — those stay with the run process, which talks to the services.
WORKER_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED",
                   "PYTHONDONTWRITEBYTECODE", "VIRTUAL_ENV", "SYSTEMROOT")
_ENV_LOCK = threading.Lock()


@contextmanager
def _worker_environment():
    """Start processes (and the forkserver, whose environment its children inherit) with only
    ``WORKER_ENV_KEEP``, and without the parent's ``__main__`` (multiprocessing would otherwise re-run the
    parent's main script in every worker; a worker needs nothing but the image core). Both are restored
    right after the start."""
    with _ENV_LOCK:
        saved_env, saved_main = dict(os.environ), sys.modules.get("__main__")
        try:
            for name in list(os.environ):
                if name not in WORKER_ENV_KEEP:
                    del os.environ[name]
            sys.modules["__main__"] = types.ModuleType("__main__")
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
            if saved_main is not None:
                sys.modules["__main__"] = saved_main


# What a pool's own forkserver imports before it forks a worker: the image core, warmed up (see there).
FORKSERVER_PRELOAD = ["assets.core.warm"]

# What the worker server (assets/core/worker_server.py) sends once a worker it forked has exited: a 2-tuple,
# where a worker's replies are 3-tuples.
EXITED = "exited"


class _ServedProcess:
    """The few ``multiprocessing.Process`` members the pool uses, for a worker forked by the worker server:
    not our child, so its exit code comes as a message on its connection."""

    sentinel = None

    def __init__(self, pid: int, conn: Connection):
        self.pid, self._conn, self.exitcode = pid, conn, None

    def is_alive(self) -> bool:
        if self.exitcode is not None:
            return False
        try:
            os.kill(self.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.exitcode is None:
            left = deadline - time.monotonic()
            try:
                if left <= 0 or not self._conn.poll(left):
                    return
                msg = self._conn.recv()
            except (EOFError, OSError):
                return
            if len(msg) == 2 and msg[0] == EXITED:
                self.exitcode = msg[1]


class _Worker:
    def __init__(self, ctx, config: CoreConfig, server: str | None = None):
        self.key: str | None = None
        self.started = 0.0
        if server:
            # Forked by the worker server: connect, hand it the config, and learn the worker's pid.
            self.conn = Client(server, family="AF_UNIX")
            try:
                self.conn.send(config)
                if not self.conn.poll(10):
                    raise OSError("the image worker server did not answer within 10 s")
                self.proc = _ServedProcess(self.conn.recv(), self.conn)
            except BaseException:
                self.conn.close()
                raise
            return
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, config), daemon=True, name="imgpipe-image-worker")
        with _worker_environment():
            self.proc.start()
        child.close()

    def stop(self, kill: bool = False) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


class WorkerPool:
    """``with WorkerPool(workers, config) as pool: for outcome in pool.map(tasks): ...``

    ``server``: the Unix socket of a running worker server (``assets/core/worker_server.py``) to fork the
    workers from, instead of a forkserver of this pool's own. If it cannot be reached the pool starts its
    own, and ``source`` says why."""

    def __init__(self, workers: int, config: CoreConfig = CoreConfig(), *, start_method: str | None = None,
                 server: str | None = None):
        self.config = config
        self.size = max(1, workers)
        method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        self._ctx = mp.get_context(method)
        if method == "forkserver":
            self._ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
        self._server = server or None
        # (no socket path: it is an internal detail, not something for the run's metadata in the UI)
        self.source = "the image worker server" if server else f"a {method} of this run's own"
        self._workers: list[_Worker] = []
        self.restarts = 0

    def __enter__(self) -> "WorkerPool":
        if self._server:
            try:
                self._workers = [_Worker(self._ctx, self.config, self._server) for _ in range(self.size)]
                return self
            except (OSError, EOFError) as exc:
                for w in self._workers:
                    w.stop(kill=True)
                self._workers, self._server = [], None
                self.source = f"a forkserver of this run's own (the image worker server: {type(exc).__name__}: {exc})"
        self._workers = [_Worker(self._ctx, self.config) for _ in range(self.size)]
        return self

    def __exit__(self, *exc) -> None:
        for w in self._workers:
            w.stop(kill=exc[0] is not None)
        self._workers = []

    def _replace(self, worker: _Worker) -> _Worker:
        worker.stop(kill=True)
        self.restarts += 1
        try:
            fresh = _Worker(self._ctx, self.config, self._server)
        except (OSError, EOFError) as exc:  # the worker server went away: carry on without it
            self._server = None
            self.source = f"a forkserver of this run's own (the image worker server: {type(exc).__name__}: {exc})"
            fresh = _Worker(self._ctx, self.config)
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def map(self, tasks: Iterable[tuple[str, Callable[[], bytes]]]) -> Iterator[Outcome]:
        """Process ``(key, load)`` pairs; yields one Outcome per task, in completion order."""
        pending = iter(tasks)
        exhausted = False
        timeout = self.config.limits.timeout_seconds

        def feed(worker: _Worker) -> bool:
            nonlocal exhausted
            if exhausted:
                return False
            try:
                key, load = next(pending)
            except StopIteration:
                exhausted = True
                return False
            worker.key, worker.started = key, time.monotonic()
            try:
                worker.conn.send((key, load()))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the worker died; the loop sees its sentinel and reports the image
            return True

        for w in self._workers:
            feed(w)
        while True:
            busy = [w for w in self._workers if w.key is not None]
            if not busy:
                return
            now = time.monotonic()
            next_deadline = min(w.started + timeout for w in busy)
            sentinels = [w.proc.sentinel for w in busy if w.proc.sentinel is not None]
            ready = wait([w.conn for w in busy] + sentinels, timeout=max(0.0, next_deadline - now))
            now = time.monotonic()
            for w in list(busy):
                if w.conn in ready:
                    try:
                        msg = w.conn.recv()
                    except (EOFError, OSError):
                        yield self._crashed(w, now)
                        feed(self._replace(w))
                        continue
                    if len(msg) == 2 and msg[0] == EXITED:  # a served worker died (the server says how)
                        w.proc.exitcode = msg[1]
                        yield self._crashed(w, now)
                        feed(self._replace(w))
                        continue
                    key, (kind, payload), rss = msg
                    w.key = None
                    if kind == "ok":
                        yield Outcome(key, image=payload, seconds=now - w.started, peak_rss_mb=rss)
                    else:
                        yield Outcome(key, rejection=payload, seconds=now - w.started, peak_rss_mb=rss)
                    feed(w)
                elif w.proc.sentinel in ready and not w.proc.is_alive():
                    yield self._crashed(w, now)
                    feed(self._replace(w))
                elif now - w.started >= timeout:
                    key = w.key
                    yield Outcome(key, rejection=ImageRejected(
                        "timeout", f"processing took longer than {timeout:g} s and was stopped"), seconds=now - w.started)
                    feed(self._replace(w))

    def _crashed(self, w: _Worker, now: float) -> Outcome:
        code = w.proc.exitcode
        reason = ("the worker was killed (signal 9, usually the kernel's out-of-memory killer)" if code == -9
                  else f"the decoder crashed (exit code {code})")
        return Outcome(w.key, rejection=ImageRejected("decoder_crashed", reason), seconds=now - w.started)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
