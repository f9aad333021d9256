"""Local Signal adapter: one empty file per notification in ``<data_dir>/signals``.

Creating a uniquely named file is atomic and needs no lock, so any process can notify; ``drain``
unlinks what it saw (a file another drainer got first is simply skipped)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path


class FileSignal:
    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def notify(self) -> None:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.signal"
        fd = os.open(self.directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(fd)

    def drain(self) -> int:
        drained = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.name.endswith(".signal"):
                    continue
                try:
                    os.unlink(entry.path)
                    drained += 1
                except FileNotFoundError:
                    pass
        return drained
