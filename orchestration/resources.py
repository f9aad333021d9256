"""Dagster resources: one per port, each a factory that yields the port's client.

- **Where the values come from.** ``resources_from_settings(settings)`` builds the set from ``Settings``
  (environment variables of the process: code server, run worker). The resources take *no run config*:
  their config schema is empty, so a run launched from the Dagster UI (launchpad, re-execution, backfill)
  with ``resources: {results: {config: {bootstrap: ...}}}`` is refused by config validation. Endpoints and
  secrets can therefore not be redirected by whoever may launch a run, and none of them is shown in the UI.
- **Lifecycle.** The factories hand out the process's shared client from ``orchestration.wiring.CLIENTS``
  (one per port per process: every sensor tick in the code server gets the same Service Bus receiver, so
  a message received in one tick can be completed in the next). The clients are closed when the process
  exits or ``CLIENTS.close_all()`` is called, not after each tick.
- **What assets and sensors see.** Plain ports (``ResourceParam[Lake]`` etc.), never adapters.
"""

from __future__ import annotations

from typing import Any, Callable

from dagster import ResourceDefinition, resource

from orchestration.domain.processing import Processing
from orchestration.settings import Settings, check_profile, load_settings
from orchestration.wiring import CLIENTS

_DESCRIPTIONS = {
    "lake": "The data lake (ADLS Gen2 in Azure; <data_dir>/lake locally). Configured by IMGPIPE_* settings.",
    "metadata": "The document store (Cosmos DB in Azure; SQLite locally). Configured by IMGPIPE_* settings.",
    "queue": "The batch queue (Service Bus in Azure; SQLite locally). Configured by IMGPIPE_* settings.",
    "signal": "The 'messages waiting' signal (Event Grid in Azure; files locally). Configured by IMGPIPE_* settings.",
    "results": "The results topic on Kafka (Event Hubs in Azure). Configured by IMGPIPE_* settings.",
    "processing": "How a run processes images: worker processes and the image core's limits and outputs "
    "(IMGPIPE_WORKERS, IMGPIPE_MAX_PIXELS, ...).",
}


def _port_resource(name: str, make: Callable[[], Any]) -> ResourceDefinition:
    @resource(config_schema={}, description=_DESCRIPTIONS[name])
    def _factory(_init_context):
        # The process's shared client: nothing to tear down per run or tick (closed at process exit).
        return make()

    return _factory


def resources_from_settings(settings: Settings | None = None) -> dict[str, ResourceDefinition]:
    s = check_profile(settings or load_settings())
    return {
        "lake": _port_resource("lake", lambda: CLIENTS.lake(s)),
        "metadata": _port_resource("metadata", lambda: CLIENTS.metadata(s)),
        "queue": _port_resource("queue", lambda: CLIENTS.queue(s)),
        "signal": _port_resource("signal", lambda: CLIENTS.signal(s)),
        "results": _port_resource("results", lambda: CLIENTS.results(s)),
        "processing": _port_resource("processing", lambda: Processing(workers=s.effective_workers,
                                                                       config=s.core_config(),
                                                                       server=s.image_worker_server)),
    }
