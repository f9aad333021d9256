"""Imports what a pool's forkserver preloads (``assets.core.pool.FORKSERVER_PRELOAD``), then pushes every file in
the directory argv[1] through ``process_image``; prints how many and the modules that processing imported."""

import importlib
import pathlib
import sys

from assets.core.pool import FORKSERVER_PRELOAD

for name in FORKSERVER_PRELOAD:
    importlib.import_module(name)
from assets.core import process_image  # noqa: E402

datas = [f.read_bytes() for f in sorted(pathlib.Path(sys.argv[1]).iterdir())]
before = set(sys.modules)
outcomes = [process_image(d) for d in datas]
print(len(outcomes), sorted(set(sys.modules) - before))
