"""The local stack's image worker server (``assets/core/worker_server.py``), started by the code server when the
``image_worker_server`` tuning is on (``dagster_tuning``): batch runs fork their image workers from it instead
of starting a forkserver of their own. Started with the image workers' minimal environment, never the code
server's; restarted if it dies; stopped with the code server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time


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
    print(f"[imgpipe image workers] {msg}", file=sys.stderr, flush=True)


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
