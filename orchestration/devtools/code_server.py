"""The local stack's code server: Dagster's own gRPC code server (`dagster api grpc`) for the imgpipe code
location, with run workers forked from a preloaded process instead of started from scratch.

    python -m orchestration.devtools.code_server --port PORT

Why: on the local stack every batch run is a child process of the code server. Dagster starts it with the
``spawn`` method, so each run first starts a Python interpreter and imports Dagster and imgpipe again —
about 1.5 CPU-s per run, more than the work of a 4-image batch (≈1.2 CPU-s on a 2-core machine). With many
small batches that start-up was most of the machine's time (bench/load.py: 20 × 4 images at 0.32 of the
images/s of one 80-image batch). Here the server's multiprocessing context is ``forkserver`` with
``orchestration.definitions`` preloaded: the forkserver imports everything once, and each run worker is a
fork of it (milliseconds), still a fresh process per run with its own Dagster instance and clients, so a
run that crashes or is killed affects nothing else.

The code server also starts an image worker server (``assets/core/worker_server.py``, restarted if it dies)
and tells its run workers where it is (``IMGPIPE_IMAGE_WORKER_SERVER``): a run then forks its image workers
from it instead of starting a forkserver of its own (~0.2 CPU-s per run, measured). The worker server starts
with the image workers' minimal environment, never the code server's.

It opens Dagster's SQLite storage the cheaper way (``sqlite_storage.tune``: migration scripts read once, not
at every sensor evaluation; engines reused).

Production (AKS) is untouched: there the K8sRunLauncher starts one Kubernetes Job per run.

The change is one attribute of Dagster's server (``DagsterApiServer._mp_ctx``, Dagster 1.13); if a Dagster
upgrade removes it, the server logs that and runs with Dagster's default ``spawn`` (slower, still correct).
``tests/test_devstack.py`` fails on that upgrade so it does not go unnoticed.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

# The code location and what a run imports besides (run_worker_preload says what and why).
PRELOAD = ["orchestration.definitions", "orchestration.devtools.run_worker_preload"]


def forkserver_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def install() -> bool:
    """Make every DagsterApiServer created in this process start run workers from the preloaded forkserver.
    Returns False (and leaves Dagster's default) if this Dagster version has no such attribute."""
    from dagster._grpc import server as grpc_server

    original_init = grpc_server.DagsterApiServer.__init__
    if getattr(original_init, "_imgpipe_forkserver", False):
        return True

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if hasattr(self, "_mp_ctx"):
            self._mp_ctx = forkserver_context()
        else:  # pragma: no cover - only on a Dagster that renamed it
            print("[imgpipe code server] this Dagster has no DagsterApiServer._mp_ctx; run workers are spawned",
                  file=sys.stderr, flush=True)

    __init__._imgpipe_forkserver = True  # type: ignore[attr-defined]
    grpc_server.DagsterApiServer.__init__ = __init__
    return True


def start_forkserver() -> bool:
    """Start the run workers' forkserver now, while the stack starts, instead of when the first run is
    launched. Its preload (importing the code location and ``run_worker_preload``, building the repository,
    warming Pillow) takes ~2 CPU-s and ~2 s; started lazily, the first batch after every start of the stack
    waited for it, and under bench/load.py it fell inside the measured window. False (and the first run starts
    it, as Dagster would) if it cannot be started here."""
    from multiprocessing import forkserver

    try:
        forkserver_context()  # the same preload the server's runs use
        forkserver.ensure_running()  # under the forkserver's own lock: a run launched meanwhile waits for it
        return True
    except Exception as exc:  # noqa: BLE001 - an optimisation only
        _say(f"the run workers' forkserver was not started ahead ({type(exc).__name__}: {exc}); "
             "the first run starts it")
        return False


class ImageWorkerServer:
    """``python -m assets.core.worker_server`` for this code server's run workers: started with the image
    workers' environment only (``WORKER_ENV_KEEP``), its socket in a private temporary directory, restarted
    if it dies (at most ``MAX_RESTARTS`` times a minute; after that runs start their own workers, slower,
    still correct), stopped with the code server (it exits when its stdin closes)."""

    MAX_RESTARTS = 5
    PREFIX = "imgpipe-image-workers-"

    def __init__(self) -> None:
        self.remove_stale()
        self.dir = tempfile.mkdtemp(prefix=self.PREFIX)  # mode 0700
        self.path = os.path.join(self.dir, "socket")
        self.proc: subprocess.Popen | None = None
        self._stopping = False
        self._restarts: list[float] = []

    def start(self, timeout_seconds: float = 30.0) -> bool:
        """Start it and wait until it listens; False if it did not (then nothing points runs at it)."""
        from assets.core.pool import WORKER_ENV_KEEP

        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k in WORKER_ENV_KEEP}
        self.proc = subprocess.Popen([sys.executable, "-m", "assets.core.worker_server", self.path],
                                     stdin=subprocess.PIPE, env=env)
        with open(os.path.join(self.dir, "pid"), "w") as fh:
            fh.write(str(self.proc.pid))
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline and self.proc.poll() is None:
            if os.path.exists(self.path):
                return True
            time.sleep(0.05)
        _say(f"the image worker server did not start (exit code {self.proc.poll()}); runs start their own workers")
        return False

    @classmethod
    def remove_stale(cls) -> list[str]:
        """Remove the directories of this user's servers that are gone: one killed outright (SIGKILL, the
        whole machine's OOM killer) cannot remove its own. A directory is stale when the server its ``pid``
        file names is not running, or when it has no ``pid`` file a minute after it was made."""
        removed = []
        for entry in os.scandir(tempfile.gettempdir()):
            if not entry.name.startswith(cls.PREFIX):
                continue
            try:
                if entry.stat().st_uid != os.getuid():
                    continue
                try:
                    with open(os.path.join(entry.path, "pid")) as fh:
                        pid = int(fh.read())
                except FileNotFoundError:
                    if time.time() - entry.stat().st_mtime < 60:
                        continue  # being started
                else:
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            if b"assets.core.worker_server" in fh.read():
                                continue  # running
                    except OSError:
                        pass
            except (OSError, ValueError):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
        return removed

    def watch(self) -> None:
        """Restart it whenever it exits (a thread of the code server)."""
        while not self._stopping and self.proc is not None:
            code = self.proc.wait()
            if self._stopping:
                return
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < 60] + [now]
            if len(self._restarts) > self.MAX_RESTARTS:
                _say(f"the image worker server exited {len(self._restarts)} times in a minute (last code {code}); "
                     "not restarted: runs start their own workers")
                return
            _say(f"the image worker server exited with code {code}; restarting it")
            if not self.start():
                return

    def stop(self) -> None:
        self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()  # its signal to stop
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _say(msg: str) -> None:
    print(f"[imgpipe code server] {msg}", file=sys.stderr, flush=True)


def start_image_worker_server() -> ImageWorkerServer | None:
    """Start the image worker server and point this process's future run workers at it."""
    import atexit

    server = ImageWorkerServer()
    if not server.start():
        server.stop()
        return None
    from orchestration.settings import env_var

    # Inherited by the forkserver, then by each run worker, whose Settings.image_worker_server it becomes.
    os.environ[env_var("image_worker_server")] = server.path
    atexit.register(server.stop)
    threading.Thread(target=server.watch, name="image-worker-server", daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    install()
    from orchestration.devtools import sqlite_storage

    sqlite_storage.tune()  # an instance per sensor evaluation: half of this process's CPU otherwise
    start_image_worker_server()  # first: the forkserver inherits the environment that points at it
    threading.Thread(target=start_forkserver, name="run-worker-forkserver", daemon=True).start()
    from dagster._cli.api import grpc_command

    return grpc_command.main(
        args=["-m", "orchestration.definitions", "-h", args.host, "-p", str(args.port),
              "--location-name", "imgpipe"],
        standalone_mode=True,
    )


if __name__ == "__main__":
    sys.exit(main())
