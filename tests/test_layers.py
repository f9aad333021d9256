"""The layout's import rules (pyproject.toml [tool.importlinter]) hold. `.ci/run` runs `lint-imports` before
the tests as well; this keeps a plain `pytest` run honest too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pip install -e '.[test]')"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_ui_and_tooling_do_not_load_dagster():
    """The web app process and the CLI never pay for (or depend on) Dagster."""
    code = ("import sys, ui_streamlit.data, orchestration.cli, orchestration.wiring, orchestration.devtools.stack;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dagster', 'dagster_k8s', 'dagster_azure')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
