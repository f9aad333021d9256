"""Starts an image worker pool in a process whose environment holds secrets, and prints what the workers'
environments hold."""

import os

from assets.core import CoreConfig
from assets.core.pool import WorkerPool

with WorkerPool(2, CoreConfig()) as pool:
    envs = [open(f"/proc/{pid}/environ", "rb").read() for pid in pool.pids]
print("workers", len(envs), any(b"sekrit-cosmos-key" in e for e in envs), any(b"PATH=" in e for e in envs))
print("parent", os.environ["IMGPIPE_COSMOS_KEY"])
