"""The local stack's code server: Dagster's own gRPC code server (`dagster api grpc`) for the imgpipe code
location, with run workers forked from a preloaded process instead of started from scratch.

    python -m orchestration.devtools.code_server --port PORT

Why: on the local stack every batch run is a child process of the code server. Dagster starts it with the
``spawn`` method, so each run first starts a Python interpreter and imports Dagster and imgpipe again —
about 1.5 CPU-s per run, more than the work of a 4-image batch (≈1.2 CPU-s on a 2-core machine). With many
small batches that start-up was most of the machine's time (bench/load.py: 20 × 4 images at 0.32 of the
images/s of one 80-image batch). Here the server's multiprocessing context is ``forkserver`` with
``orchestration.definitions`` preloaded: the forkserver imports everything once, and each run worker is a
fork of it (milliseconds), still a fresh process per run with its own Dagster instance and clients, so a
run that crashes or is killed affects nothing else.

Production (AKS) is untouched: there the K8sRunLauncher starts one Kubernetes Job per run.

The change is one attribute of Dagster's server (``DagsterApiServer._mp_ctx``, Dagster 1.13); if a Dagster
upgrade removes it, the server logs that and runs with Dagster's default ``spawn`` (slower, still correct).
``tests/test_devstack.py`` fails on that upgrade so it does not go unnoticed.
"""

from __future__ import annotations

import multiprocessing
import sys

# The code location and what a run imports besides (run_worker_preload says what and why).
PRELOAD = ["orchestration.definitions", "orchestration.devtools.run_worker_preload"]


def forkserver_context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def install() -> bool:
    """Make every DagsterApiServer created in this process start run workers from the preloaded forkserver.
    Returns False (and leaves Dagster's default) if this Dagster version has no such attribute."""
    from dagster._grpc import server as grpc_server

    original_init = grpc_server.DagsterApiServer.__init__
    if getattr(original_init, "_imgpipe_forkserver", False):
        return True

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if hasattr(self, "_mp_ctx"):
            self._mp_ctx = forkserver_context()
        else:  # pragma: no cover - only on a Dagster that renamed it
            print("[imgpipe code server] this Dagster has no DagsterApiServer._mp_ctx; run workers are spawned",
                  file=sys.stderr, flush=True)

    __init__._imgpipe_forkserver = True  # type: ignore[attr-defined]
    grpc_server.DagsterApiServer.__init__ = __init__
    return True


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    install()
    from dagster._cli.api import grpc_command

    return grpc_command.main(
        args=["-m", "orchestration.definitions", "-h", args.host, "-p", str(args.port),
              "--location-name", "imgpipe"],
        standalone_mode=True,
    )


if __name__ == "__main__":
    sys.exit(main())
