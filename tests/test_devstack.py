"""The supervised dev stack: a taken port is named with the program on it; a child that dies is restarted
(bounded); every child is stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


from orchestration.devtools import kafka_broker
from orchestration.devtools.devstack import MAX_RESTARTS, Child, supervise_once


def test_a_taken_port_is_an_error_naming_the_port_and_the_program(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import socket, time; s = socket.socket(); "
                               "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        env = {**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path), "IMGPIPE_WEBSERVER_PORT": str(port),
               "IMGPIPE_WEB": "false", "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{kafka_broker.free_port()}"}
        proc = subprocess.run([sys.executable, "-m", "orchestration.cli", "dev", "--no-sample"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"port {port} (IMGPIPE_WEBSERVER_PORT" in proc.stderr
        assert f"pid {holder.pid} (" in proc.stderr and "socket" in proc.stderr  # who holds it
        assert "Traceback" not in proc.stderr
        assert "Kafka broker (Tansu) pid" not in proc.stdout  # nothing was started
    finally:
        holder.kill()
        holder.wait()


def _sleeper(on_start):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    on_start(proc)
    return proc


def test_a_dead_child_is_restarted_and_a_crash_loop_is_bounded():
    child = Child("sleeper", _sleeper)
    child.launch()
    restarted = []
    try:
        assert supervise_once([child]) is None  # alive: nothing to do
        for n in range(MAX_RESTARTS):
            first = child.proc.pid
            os.kill(first, signal.SIGKILL)
            child.proc.wait()
            assert supervise_once([child], on_restart=restarted.append) is None
            assert child.proc.pid != first and child.proc.poll() is None
        assert len(restarted) == MAX_RESTARTS
        child.proc.kill()
        child.proc.wait()
        reason = supervise_once([child])
        assert reason and "sleeper exited" in reason and "stopping the stack" in reason
    finally:
        if child.proc and child.proc.poll() is None:
            child.proc.kill()


def test_start_hooks_register_the_process_before_it_is_ready(tmp_path):
    """A Ctrl-C while a child starts must find it registered: the hook fires before the readiness wait."""
    seen = []
    port = kafka_broker.free_port()

    def on_start(proc):
        seen.append((proc.pid, kafka_broker.port_in_use("127.0.0.1", port)))

    broker = kafka_broker.start_broker(port, on_start=on_start)
    try:
        assert seen and seen[0][0] == broker.pid
    finally:
        kafka_broker.stop_process(broker)
