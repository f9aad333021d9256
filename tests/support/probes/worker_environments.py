"""Starts an image worker pool (from its own forkserver, or from an image worker server with ``--server``) in
a process whose environment holds secrets, and prints what the workers' environments hold."""

import os
import sys

from assets.core import CoreConfig
from assets.core.pool import WorkerPool

server = None
if "--server" in sys.argv:
    from orchestration.devtools.image_workers import ImageWorkerServer

    server = ImageWorkerServer()
    assert server.start()
with WorkerPool(2, CoreConfig(), server=server.path if server else None) as pool:
    pids = pool.pids + ([server.proc.pid] if server else [])
    envs = [open(f"/proc/{pid}/environ", "rb").read() for pid in pids]
    print("from", pool.source)
if server:
    server.stop()
    print("mode", oct(os.stat(server.path).st_mode & 0o777) if os.path.exists(server.path) else "gone")
print("workers", len(envs), any(b"sekrit-cosmos-key" in e for e in envs), any(b"PATH=" in e for e in envs))
print("parent", os.environ["IMGPIPE_COSMOS_KEY"])
