"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(results: dict, out: str | Path) -> Path:
    """Write the benchmark's figures as JSON and say where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"written to {path}")
    return path
