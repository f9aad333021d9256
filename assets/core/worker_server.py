"""A long-lived process that forks image workers on request, so that a batch run does not start its own.

    python -m assets.core.worker_server SOCKET_PATH      (started by the local stack's code server)

Why: without it each batch run's ``WorkerPool`` starts a multiprocessing forkserver, a new interpreter that
imports Pillow and numpy before it can fork a worker: ~0.2 CPU-s and 0.15 s per run, measured, a quarter
of a 4-image batch's image work. This server pays that once; a run asks it for workers over a Unix socket
and each one is a fork (milliseconds), exactly as isolated as before: a process of its own with its own
address-space cap, killed on a timeout, restarted after a crash (``assets/core/pool.py``).

What an image worker must not get, it does not get here either: the server is started with
``WORKER_ENV_KEEP`` only (no credentials in any worker's ``/proc/<pid>/environ``), never loads a
credential, and forks workers before they see a single image. Its socket is in a directory of its own,
mode 0700, the socket 0600: only the stack's own user can ask it for workers.

Protocol (``multiprocessing.connection`` messages over the socket):
    client -> server   connect, then the ``CoreConfig``
    worker -> client   its pid, then one reply per task, as ``pool._worker_main`` (the same loop)
    server -> client   ``("exited", exit code)`` once the worker has exited, then the socket closes

The server stops when its parent closes its stdin (or dies), removing its socket; a worker that is busy
then finishes its image and exits when its run closes the connection.
"""

from __future__ import annotations

import importlib
import os
import selectors
import shutil
import signal
import socket
import sys
from multiprocessing.connection import Connection

# Imported before any fork (Pillow, numpy, the image core, and what their first image would import
# lazily: assets.core.warm), so that no worker imports anything.
from assets.core.pool import EXITED, _worker_main

importlib.import_module("assets.core.warm")  # warms up on import


def serve(path: str) -> int:
    if os.path.exists(path):
        os.unlink(path)  # a server before this one died without removing it
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, 0o600)
    listener.listen(64)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes select() through the wakeup fd
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us by closing stdin
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # or its process group is stopped: clean up
    signal.set_wakeup_fd(wake_w)

    clients: dict[int, Connection] = {}  # worker pid -> the server's end of that worker's connection
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, "parent")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "accept":
                    try:
                        sock, _ = listener.accept()
                    except OSError:
                        continue
                    conn = Connection(sock.detach())
                    pid = os.fork()
                    if pid == 0:  # the worker
                        _become_worker(conn, listener, selector, [wake_r, wake_w], clients)
                    clients[pid] = conn
                elif key.data == "child":
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    _reap(clients)
                elif not os.read(key.fd, 4096):  # the parent closed our stdin or died
                    return 0
    finally:
        selector.close()
        listener.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def _reap(clients: dict[int, Connection]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = clients.pop(pid, None)
        if conn is not None:
            try:  # the worker's own replies are all before this on the stream
                conn.send((EXITED, os.waitstatus_to_exitcode(status)))
            except OSError:
                pass  # the run is gone already
            conn.close()


def _become_worker(conn: Connection, listener, selector, fds: list[int], clients: dict[int, Connection]) -> None:
    code = 0
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        selector.close()
        listener.close()
        for fd in fds:
            os.close(fd)
        for other in clients.values():  # other runs' connections are not this worker's business
            other.close()
        os.close(0)
        config = conn.recv()
        conn.send(os.getpid())
        _worker_main(conn, config)
    except BaseException:  # noqa: BLE001 - a worker never returns into the server's loop
        code = 1
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m assets.core.worker_server SOCKET_PATH", file=sys.stderr)
        return 2
    path = args[0]
    try:
        return serve(path)
    finally:
        parent = os.path.dirname(path)
        if os.path.basename(parent).startswith("imgpipe-image-workers-"):
            shutil.rmtree(parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
