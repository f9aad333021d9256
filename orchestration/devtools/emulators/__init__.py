"""Local servers that stand in for Azure services in tests and the `emulated` profile:
Azurite (Blob + Queue) and @vercel/cosmosdb-server (Cosmos DB), both from the npm registry.

``ensure_tools`` installs them (once) into a tools folder; ``start_azurite`` / ``start_cosmos`` start
them on 127.0.0.1 and return the Popen, to be stopped by PID with ``processes.stop_process``.
What they cannot do (measured here; the contract suites skip or xfail those cases by name): Azurite has no ADLS Gen2 (DFS) endpoint and no
blob soft delete; cosmosdb-server does not support DISTINCT VALUE, GROUP BY or transactional batches, nor time
to live (its HTTP 500 on a point read of a missing item is put right in cosmos_server.js).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from orchestration.devtools.processes import die_with_parent, wait_started

AZURITE = "azurite@3.35.0"
COSMOSDB_SERVER = "@vercel/cosmosdb-server@1.0.1"
HERE = Path(__file__).parent

# Azurite's well-known development account (public, documented by Microsoft; not a secret).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
# The Cosmos DB emulator's well-known key (public); cosmosdb-server accepts any key.
COSMOS_DEV_KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="


class ToolsMissing(RuntimeError):
    pass


# Written last, after npm finished and the install was checked: its presence means a complete install.
STAMP = "imgpipe-tools.json"


def _stamp() -> dict:
    return {"packages": [AZURITE, COSMOSDB_SERVER]}


def tools_installed(tools_dir: Path) -> bool:
    """A complete install of exactly these versions (an interrupted one never has the stamp)."""
    try:
        return json.loads((tools_dir / STAMP).read_text()) == _stamp()
    except (OSError, ValueError):
        return False


def _check_install(folder: Path) -> None:
    """Both packages and every dependency they declare are on disk (what a half-finished npm install lacks:
    an interrupted first start once left Azurite without 'moment')."""
    modules = folder / "node_modules"
    for package in ("azurite", "@vercel/cosmosdb-server"):
        try:
            declared = json.loads((modules / package / "package.json").read_text()).get("dependencies") or {}
        except (OSError, ValueError):
            raise ToolsMissing(f"the npm install in {folder} is incomplete: {package} is missing") from None
        for dep in declared:
            if not any((base / dep / "package.json").is_file() for base in (modules / package / "node_modules", modules)):
                raise ToolsMissing(f"the npm install in {folder} is incomplete: {package} needs {dep!r}")


def ensure_tools(tools_dir: Path, *, log=print) -> Path:
    """Install Azurite and cosmosdb-server with npm into ``tools_dir`` unless a complete install is there.

    npm installs into a fresh folder beside it; only a finished and checked install is moved into place
    (one rename), so an interrupted install (Ctrl-C, a lost network) leaves nothing half-done behind and
    the next start installs again. An older install without the stamp is replaced the same way."""
    if tools_installed(tools_dir):
        return tools_dir
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise ToolsMissing("the emulated profile needs Node.js and npm on PATH (for Azurite and cosmosdb-server)")
    tools_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{tools_dir.name}.partial-", dir=tools_dir.parent))
    try:
        log(f"installing {AZURITE} and {COSMOSDB_SERVER} into {tools_dir} (once, ~30 s) ...")
        done = subprocess.run([npm, "install", "--prefix", str(partial), "--no-audit", "--no-fund", "--silent",
                               AZURITE, COSMOSDB_SERVER], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise ToolsMissing(f"npm could not install {AZURITE} and {COSMOSDB_SERVER}: "
                               f"{(done.stderr.strip().splitlines() or ['(no message)'])[-1]}")
        _check_install(partial)
        (partial / STAMP).write_text(json.dumps(_stamp()))
        old = tools_dir.with_name(f".{tools_dir.name}.old-{os.getpid()}")
        if tools_dir.exists():
            os.replace(tools_dir, old)
        os.replace(partial, tools_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return tools_dir


def azurite_connection_string(blob_port: int, queue_port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"BlobEndpoint=http://127.0.0.1:{blob_port}/{DEV_ACCOUNT};"
        f"QueueEndpoint=http://127.0.0.1:{queue_port}/{DEV_ACCOUNT};"
    )


def start_azurite(tools_dir: Path, blob_port: int, queue_port: int, *, log_path: Path | None = None,
                  on_start=None) -> subprocess.Popen:
    exe = tools_dir / "node_modules" / ".bin" / "azurite"
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [str(exe), "--blobHost", "127.0.0.1", "--blobPort", str(blob_port), "--queueHost", "127.0.0.1",
         "--queuePort", str(queue_port), "--tableHost", "127.0.0.1", "--tablePort", "0", "--inMemoryPersistence",
         "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent(),
    )
    if on_start:
        on_start(proc)
    wait_started(proc, "Azurite", [blob_port, queue_port], 30, log_path)
    return proc


def start_cosmos(tools_dir: Path, port: int, *, log_path: Path | None = None, on_start=None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, "NODE_PATH": str(tools_dir / "node_modules")}
    proc = subprocess.Popen(["node", str(HERE / "cosmos_server.js"), str(port), "127.0.0.1"], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent())
    if on_start:
        on_start(proc)
    wait_started(proc, "cosmosdb-server", [port], 30, log_path)
    return proc
