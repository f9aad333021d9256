"""``DevStack``: `imgpipe dev` as a child process, its output read by a thread for as long as it runs.

A pipe that nobody reads fills up (64 KiB) and the stack then blocks on its next line — its supervisor, its
watchdog and its Ctrl-C handling with it — so every test and benchmark starts the stack through this class.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support.procs import descendants


class StackDidNotStart(AssertionError):
    pass


class DevStack:
    READY = "Press Ctrl-C"

    def __init__(self, env: dict, *args: str, log_path: Path | None = None, stdin=None):
        self.env = env
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._log = open(log_path, "a") if log_path else None
        self.proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "dev", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=stdin, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._drain, name="imgpipe-dev-output", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            if self._log:
                self._log.write(line)
                self._log.flush()
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 180.0, *, after: int = 0) -> list[str]:
        """Wait until a line (from line ``after`` on) contains ``needle``; returns the lines so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if any(needle in line for line in self.lines[after:]):
                    return list(self.lines)
                if self.proc.poll() is not None and not self._reader.is_alive():
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(min(left, 0.5))
        raise StackDidNotStart(f"{needle!r} not seen (exit code {self.proc.poll()}); output:\n{self.output[-6000:]}")

    def ready(self, timeout: float = 180.0) -> "DevStack":
        self.wait_for(self.READY, timeout)
        return self

    def children(self) -> list[int]:
        return descendants(self.proc.pid)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 120.0) -> int:
        """Stop it the documented way (Ctrl-C) and wait; its process group is killed if it hangs."""
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self._log:
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "DevStack":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def local_env(tmp_path: Path, **extra: str) -> dict:
    """The environment of a 'local' stack of its own: data dir under ``tmp_path``, its own broker and UI
    ports, no web app (the web app has its own browser tests)."""
    from orchestration.devtools.processes import free_port

    return {**os.environ, "IMGPIPE_PROFILE": "local", "IMGPIPE_DATA_DIR": str(tmp_path / "data"),
            "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "IMGPIPE_WEBSERVER_PORT": str(free_port()),
            "IMGPIPE_WEB": "false", **extra}


def settings_from(env: dict):
    """The settings the stack's processes build from ``env``."""
    from orchestration.devtools.dev_settings import DevSettings, load_dev_settings

    given = {k[len("IMGPIPE_"):].lower(): v for k, v in env.items() if k.startswith("IMGPIPE_")}
    return load_dev_settings(**{k: v for k, v in given.items() if k in DevSettings.model_fields})
