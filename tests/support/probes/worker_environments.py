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
import io

from PIL import Image

png = io.BytesIO()
Image.new("RGB", (8, 8)).save(png, "PNG")
with WorkerPool(2, CoreConfig(), server=server.path if server else None) as pool:
    # Each worker has taken a task (so it is past its start-up) before it is looked at.
    list(pool.map([(str(i), lambda: png.getvalue()) for i in range(4)]))
    pids = pool.pids + ([server.proc.pid] if server else [])
    envs = [open(f"/proc/{pid}/environ", "rb").read() for pid in pids]
    nnp = [next(line.split()[1] for line in open(f"/proc/{pid}/status") if line.startswith("NoNewPrivs:"))
           for pid in pool.pids]
    print("from", pool.source)
if server:
    server.stop()
    print("mode", oct(os.stat(server.path).st_mode & 0o777) if os.path.exists(server.path) else "gone")
print("workers", len(envs), any(b"sekrit-cosmos-key" in e for e in envs), any(b"PATH=" in e for e in envs))
print("parent", os.environ["IMGPIPE_COSMOS_KEY"])
print("no new privileges", " ".join(nnp))
