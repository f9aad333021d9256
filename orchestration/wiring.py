"""Builds the adapters behind each port from Settings — the one place that picks an implementation.

Only the embedded local adapters exist so far (profile 'local'); the Azure adapters plug in here."""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.adapters.kafka_results import KafkaResultStream
from orchestration.adapters.local_lake import LocalLake
from orchestration.adapters.local_metadata import SqliteMetadataStore
from orchestration.adapters.local_queue import SqliteBatchQueue
from orchestration.adapters.local_signal import FileSignal
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue
from orchestration.ports.results import ResultStream
from orchestration.ports.signal import Signal
from orchestration.settings import Settings


def build_lake(settings: Settings) -> Lake:
    return LocalLake(settings.lake_dir, soft_delete_days=settings.lake_soft_delete_days)


def build_metadata(settings: Settings) -> MetadataStore:
    return SqliteMetadataStore(settings.metadata_db)


def build_signal(settings: Settings) -> Signal:
    return FileSignal(settings.signal_dir)


def build_queue(settings: Settings) -> BatchQueue:
    # Locally the queue raises the signal itself, as Service Bus + Event Grid do in Azure.
    return SqliteBatchQueue(
        settings.queue_db,
        lock_duration_seconds=settings.queue_lock_seconds,
        max_delivery_count=settings.queue_max_delivery_count,
        duplicate_window_seconds=settings.queue_duplicate_window_seconds,
        on_send=build_signal(settings).notify,
    )


def build_results(settings: Settings) -> ResultStream:
    return KafkaResultStream(settings.kafka_bootstrap, settings.kafka_topic)


@dataclass
class Services:
    """The ports intake and `imgpipe status` need (Kafka is opened only by the run that publishes)."""

    settings: Settings
    lake: Lake
    metadata: MetadataStore
    queue: BatchQueue

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        return cls(settings, build_lake(settings), build_metadata(settings), build_queue(settings))
