"""Local servers that stand in for Azure services in tests and the `emulated` profile:
Azurite (Blob + Queue) and @vercel/cosmosdb-server (Cosmos DB), both from the npm registry.

``ensure_tools`` installs them (once) into a tools folder; ``start_azurite`` / ``start_cosmos`` start
them on 127.0.0.1 and return the Popen, to be stopped by PID with ``processes.stop_process``.
What they cannot do (measured here; the contract suites skip or xfail those cases by name): Azurite has no ADLS Gen2 (DFS) endpoint and no
blob soft delete; cosmosdb-server answers a point read of a missing item with HTTP 500 and does not
support DISTINCT VALUE, GROUP BY or transactional batches.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from orchestration.devtools.processes import die_with_parent, stop_process, wait_for_port

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


def tools_installed(tools_dir: Path) -> bool:
    return (tools_dir / "node_modules" / ".bin" / "azurite").exists() and (
        tools_dir / "node_modules" / "@vercel" / "cosmosdb-server" / "package.json"
    ).exists()


def ensure_tools(tools_dir: Path, *, log=print) -> Path:
    """Install Azurite and cosmosdb-server with npm into ``tools_dir`` unless already there."""
    if tools_installed(tools_dir):
        return tools_dir
    npm = shutil.which("npm")
    if not npm or not shutil.which("node"):
        raise ToolsMissing("the emulated profile needs Node.js and npm on PATH (for Azurite and cosmosdb-server)")
    tools_dir.mkdir(parents=True, exist_ok=True)
    log(f"installing {AZURITE} and {COSMOSDB_SERVER} into {tools_dir} (once, ~30 s) ...")
    subprocess.run([npm, "install", "--prefix", str(tools_dir), "--no-audit", "--no-fund", "--silent", AZURITE, COSMOSDB_SERVER],
                   check=True, stdout=subprocess.DEVNULL)
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
    try:
        wait_for_port("127.0.0.1", blob_port, 30)
        wait_for_port("127.0.0.1", queue_port, 30)
    except TimeoutError:
        stop_process(proc)
        raise
    return proc


def start_cosmos(tools_dir: Path, port: int, *, log_path: Path | None = None, on_start=None) -> subprocess.Popen:
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, "NODE_PATH": str(tools_dir / "node_modules")}
    proc = subprocess.Popen(["node", str(HERE / "cosmos_server.js"), str(port), "127.0.0.1"], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=die_with_parent())
    if on_start:
        on_start(proc)
    try:
        wait_for_port("127.0.0.1", port, 30)
    except TimeoutError:
        stop_process(proc)
        raise
    return proc
