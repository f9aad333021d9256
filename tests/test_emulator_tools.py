"""The emulated stack's npm tools: an interrupted install never breaks later starts, and a server that dies
while starting is reported at once with its own reason — no 30 s wait, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.devtools import emulators
from orchestration.devtools.processes import StartupFailed, free_port

FAKE_NPM = r'''#!{python}
import json, os, sys
from pathlib import Path
prefix = Path(sys.argv[sys.argv.index("--prefix") + 1])
modules = prefix / "node_modules"
def package(name, deps):
    (modules / name).mkdir(parents=True, exist_ok=True)
    (modules / name / "package.json").write_text(json.dumps({{"name": name, "dependencies": deps}}))
(modules / ".bin").mkdir(parents=True, exist_ok=True)
(modules / ".bin" / "azurite").write_text("#!/bin/sh\n")
package("azurite", {{"moment": "^2"}})
package("@vercel/cosmosdb-server", {{}})
if os.environ.get("FAKE_NPM_MODE") == "interrupted":
    sys.exit(130)  # Ctrl-C before 'moment' was unpacked
package("moment", {{}})
'''


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    npm.write_text(FAKE_NPM.format(python=sys.executable))
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    if not emulators.shutil.which("node"):
        node = bin_dir / "node"
        node.write_text("#!/bin/sh\n")
        node.chmod(0o755)
    return monkeypatch


def test_an_interrupted_install_leaves_nothing_half_done_and_the_next_start_installs(tmp_path, fake_npm):
    tools = tmp_path / "tools"
    fake_npm.setenv("FAKE_NPM_MODE", "interrupted")
    with pytest.raises(emulators.ToolsMissing):
        emulators.ensure_tools(tools, log=lambda *_: None)
    assert not tools.exists() and not emulators.tools_installed(tools)
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]  # no leftovers beside it
    fake_npm.setenv("FAKE_NPM_MODE", "complete")
    emulators.ensure_tools(tools, log=lambda *_: None)
    assert emulators.tools_installed(tools) and (tools / "node_modules" / "moment" / "package.json").exists()


def test_a_broken_install_from_before_is_repaired(tmp_path, fake_npm):
    """What an interrupted first start of the old code left: azurite's launcher there, 'moment' missing."""
    tools = tmp_path / "tools"
    (tools / "node_modules" / ".bin").mkdir(parents=True)
    (tools / "node_modules" / ".bin" / "azurite").write_text("#!/bin/sh\n")
    (tools / "node_modules" / "@vercel" / "cosmosdb-server").mkdir(parents=True)
    (tools / "node_modules" / "@vercel" / "cosmosdb-server" / "package.json").write_text("{}")
    assert not emulators.tools_installed(tools)
    fake_npm.setenv("FAKE_NPM_MODE", "complete")
    emulators.ensure_tools(tools, log=lambda *_: None)
    assert emulators.tools_installed(tools) and (tools / "node_modules" / "moment").is_dir()


def _broken_tools(tmp_path: Path) -> Path:
    """A stamped install whose Azurite dies at start with Node's own error."""
    tools = tmp_path / "tools"
    bin_dir = tools / "node_modules" / ".bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "azurite").write_text("#!/bin/sh\necho \"Error: Cannot find module 'moment'\" >&2\nexit 1\n")
    (bin_dir / "azurite").chmod(0o755)
    (tools / emulators.STAMP).write_text(json.dumps(emulators._stamp()))
    return tools


def test_a_server_that_dies_while_starting_is_reported_at_once_with_its_own_error(tmp_path):
    tools = _broken_tools(tmp_path)
    started = time.monotonic()
    with pytest.raises(StartupFailed, match="Cannot find module 'moment'") as err:
        emulators.start_azurite(tools, free_port(), free_port(), log_path=tmp_path / "azurite.log")
    assert time.monotonic() - started < 10  # not the 30 s port wait
    assert "Azurite exited with code 1" in str(err.value)


def test_imgpipe_dev_says_why_the_emulated_stack_did_not_start_without_a_traceback(tmp_path):
    tools = _broken_tools(tmp_path)
    env = {**os.environ, "IMGPIPE_PROFILE": "emulated", "IMGPIPE_DATA_DIR": str(tmp_path / "data"),
           "IMGPIPE_TOOLS_DIR": str(tools), "IMGPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
           "IMGPIPE_WEBSERVER_PORT": str(free_port()), "IMGPIPE_WEB": "false"}
    env.pop("IMGPIPE_STORAGE_CONNECTION_STRING", None)
    env.pop("IMGPIPE_COSMOS_ENDPOINT", None)
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "dev", "--no-sample"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Cannot find module 'moment'" in done.stderr and "Traceback" not in done.stdout + done.stderr
