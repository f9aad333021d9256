"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.stack import DevStack  # noqa: E402  (the tests' harness: one way to run the stack)


def write_results(results: dict, out: str | Path) -> Path:
    """Write the benchmark's figures as JSON and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"written to {path}")
    return path


def median_ms(fn, repeat: int, clock=time.perf_counter) -> float:
    """Median time of ``fn`` in ms: wall time, or ``clock=time.process_time`` for CPU time (all threads)."""
    times = []
    for _ in range(repeat):
        t = clock()
        fn()
        times.append((clock() - t) * 1000)
    return statistics.median(times)


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


@contextmanager
def local_stack(env: dict, log_path: Path, stop_timeout: float = 120.0) -> Iterator[DevStack]:
    """``imgpipe dev --no-sample`` for the length of a benchmark (the tests' harness: its output is read all
    along, into ``log_path``); yields once it is ready, stops it with Ctrl-C (its process group is killed if
    it hangs), so a benchmark never leaves a stack behind."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stack = DevStack(env, "--no-sample", log_path=log_path)
    try:
        stack.ready(timeout=300)
        yield stack
    finally:
        if stack.stop(timeout=stop_timeout) not in (0, None):
            print(f"the local stack stopped with code {stack.returncode} (see {log_path})", flush=True)
