"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def write_results(results: dict, out: str | Path) -> Path:
    """Write the benchmark's figures as JSON and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"written to {path}")
    return path


@contextmanager
def local_stack(env: dict, log_path: Path, stop_timeout: float = 120.0) -> Iterator[subprocess.Popen]:
    """``imgpipe dev --no-sample`` for the length of a benchmark; yields once it is ready.

    Everything the stack prints goes to ``log_path``, read by a thread for as long as the stack runs: a pipe
    that nobody reads fills up (64 KiB) and the stack then blocks on its next line — its supervisor, its
    watchdog and its Ctrl-C handling with it. On exit the stack gets SIGINT (its documented stop) and
    the benchmark waits for it; if it has not stopped in ``stop_timeout`` its process group is killed, so
    a benchmark never leaves a stack behind.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "dev", "--no-sample"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ready = threading.Event()

    def drain() -> None:
        with open(log_path, "a") as log:
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if "Press Ctrl-C" in line:
                    ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        while not ready.wait(0.5):
            if proc.poll() is not None:
                raise RuntimeError(f"the local stack exited with code {proc.returncode}; see {log_path}")
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            print(f"the local stack did not stop in {stop_timeout:.0f} s; killing it (see {log_path})", flush=True)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        reader.join(timeout=10)
