"""Dagster resources: one ``ConfigurableResource`` per port, each handing assets and sensors the port's client.

- **Where the values come from.** ``resources_from_settings(settings)`` binds the set to ``Settings``
  (environment variables of the process: code server, run worker). The resources have *no config fields*:
  a run launched from the Dagster UI (launchpad, re-execution, backfill) with
  ``resources: {results: {config: {bootstrap: ...}}}`` is refused by config validation. Endpoints and secrets
  can therefore not be redirected by whoever may launch a run, and none of them is shown in the UI.
- **Lifecycle.** ``create_resource`` hands out the process's shared client from ``orchestration.wiring.CLIENTS``
  (one per port per process: every sensor tick in the code server gets the same Service Bus receiver, so a
  message received in one tick can be completed in the next). The clients are closed when the process exits
  or ``CLIENTS.close_all()`` is called, not after each tick.
- **What assets and sensors see.** Plain ports (``ResourceParam[Lake]`` etc.), never adapters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import json

from dagster import ConfigurableResource, InitResourceContext, InputContext, IOManager, OutputContext, io_manager

from orchestration.domain.manifest import step_output_path
from orchestration.domain.processing import Processing
from orchestration.ports.lake import Lake
from orchestration.settings import Settings, check_profile, load_settings
from orchestration.wiring import CLIENTS


class _PortResource(ConfigurableResource):
    port: ClassVar[str] = ""
    settings: ClassVar[Settings | None] = None  # bound by resources_from_settings; never run config

    def _settings(self) -> Settings:
        return self.settings if self.settings is not None else check_profile(load_settings())

    def create_resource(self, context: InitResourceContext) -> Any:
        # The process's shared client: nothing to tear down per run or tick (closed at process exit).
        return CLIENTS.get(self.port, self._settings())


class LakeResource(_PortResource):
    """The data lake (ADLS Gen2 in Azure; <data_dir>/lake locally). Configured by IMGPIPE_* settings."""

    port = "lake"


class MetadataResource(_PortResource):
    """The document store (Cosmos DB in Azure; SQLite locally). Configured by IMGPIPE_* settings."""

    port = "metadata"


class QueueResource(_PortResource):
    """The batch queue (Service Bus in Azure; SQLite locally). Configured by IMGPIPE_* settings."""

    port = "queue"


class SignalResource(_PortResource):
    """The 'messages waiting' signal (Event Grid in Azure; files locally). Configured by IMGPIPE_* settings."""

    port = "signal"


class ResultsResource(_PortResource):
    """The results topic on Kafka (Event Hubs in Azure). Configured by IMGPIPE_* settings."""

    port = "results"


class UnderstandingResource(_PortResource):
    """What each image shows: local models (onnxruntime) or Azure AI Vision + Content Safety, or None when
    IMGPIPE_UNDERSTANDING=off."""

    port = "understanding"


class ProcessingResource(_PortResource):
    """How a run processes images: worker processes and the image core's limits and outputs (IMGPIPE_WORKERS,
    IMGPIPE_MAX_PIXELS, ...)."""

    def create_resource(self, context: InitResourceContext) -> Processing:
        s = self._settings()
        return Processing(workers=s.effective_workers, config=s.core_config(), server=s.image_worker_server,
                          fanout_min_images=s.fanout_min_images, chunk_images=s.fanout_chunk_images)


class LakeStepIOManager(IOManager):
    """Hands a step's output (JSON) to the next step through the lake: in a fanned-out run the chunk lists and
    chunk results cross processes (locally) or pods (k8s_job_executor), which share no disk. One object per
    output under the batch's processed/ prefix (``step_output_path``), named by the run that made it, so a
    re-execution from failure reads what its parent run's chunks left."""

    def __init__(self, lake: Lake):
        self._lake = lake

    def handle_output(self, context: OutputContext, obj) -> None:
        path = step_output_path(context.partition_key, context.get_identifier())
        self._lake.write(path, json.dumps(obj).encode(), content_type="application/json")

    def load_input(self, context: InputContext):
        return json.loads(self._lake.read(step_output_path(context.partition_key,
                                                           context.upstream_output.get_identifier())))


@io_manager(config_schema={}, required_resource_keys={"lake"}, description="Step outputs of a batch run as JSON in the lake.")
def lake_step_io_manager(init_context) -> LakeStepIOManager:
    return LakeStepIOManager(init_context.resources.lake)


STEP_IO = "lake_step_io"  # the key assets name as io_manager_key

RESOURCES: dict[str, type[_PortResource]] = {
    "lake": LakeResource, "metadata": MetadataResource, "queue": QueueResource, "signal": SignalResource,
    "results": ResultsResource, "processing": ProcessingResource, "understanding": UnderstandingResource,
}


def resources_from_settings(settings: Settings | None = None) -> dict:
    """Every resource, bound to ``settings`` (default: the process's, from the environment), and the IO manager
    on the lake. The binding is a class attribute, not config: Dagster rebuilds resources from their config,
    which is empty."""
    s = check_profile(settings or load_settings())
    return {**{name: type(cls.__name__, (cls,), {"settings": s, "__doc__": cls.__doc__,
                                                 "__module__": __name__})()
               for name, cls in RESOURCES.items()},
            STEP_IO: lake_step_io_manager}
