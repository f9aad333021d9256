"""The ports the business steps work on, bundled with the settings they were built from.

Built once per process by ``orchestration.wiring.services`` (the clients are shared, see there)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue
from orchestration.settings import Settings


@dataclass(frozen=True)
class Services:
    """The ports intake, `imgpipe status` and the web app need (Kafka is opened only by the run)."""

    settings: Settings
    lake: Lake
    metadata: MetadataStore
    queue: BatchQueue
