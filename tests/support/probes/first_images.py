"""Imports what a worker is forked from (argv[2:]: a pool's forkserver preload, or the image worker server),
then pushes every file in the directory argv[1] through ``process_image``; prints how many and the modules
that processing imported."""

import importlib
import pathlib
import sys

for name in sys.argv[2:]:
    importlib.import_module(name)
from assets.core import process_image  # noqa: E402

datas = [f.read_bytes() for f in sorted(pathlib.Path(sys.argv[1]).iterdir())]
before = set(sys.modules)
outcomes = [process_image(d) for d in datas]
print(len(outcomes), sorted(set(sys.modules) - before))
