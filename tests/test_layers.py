"""The layout's import rules (pyproject.toml [tool.importlinter]) hold: `lint-imports` runs here, once, in
every run of the tests (the quick path included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.procs import probe

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pip install -e '.[test]')"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ui_and_tooling_do_not_load_dagster():
    """The web app process and the CLI never pay for (or depend on) Dagster."""
    proc = subprocess.run(probe("imports", "ui_streamlit.data", "orchestration.cli", "orchestration.wiring",
                                "orchestration.devtools.stack"), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
