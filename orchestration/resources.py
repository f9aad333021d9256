"""Dagster resources: one thin ConfigurableResource per port.

Each holds only configuration (shown in the Dagster UI) and hands out the adapter chosen by
``orchestration.wiring`` — assets and sensors never construct adapters themselves. ``from_settings``
builds the set the code location uses from ``IMGPIPE_*`` environment variables.
"""

from __future__ import annotations

from dagster import ConfigurableResource

from orchestration import wiring
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue
from orchestration.ports.results import ResultStream
from orchestration.ports.signal import Signal
from orchestration.settings import Settings, check_profile, load_settings


class LakeResource(ConfigurableResource):
    """The data lake (ADLS Gen2 in Azure; ``<data_dir>/lake`` locally)."""

    data_dir: str
    soft_delete_days: float = 7.0

    def client(self) -> Lake:
        return wiring.build_lake(load_settings(data_dir=self.data_dir, lake_soft_delete_days=self.soft_delete_days))


class MetadataStoreResource(ConfigurableResource):
    """The document store (Cosmos DB in Azure; SQLite locally)."""

    data_dir: str

    def client(self) -> MetadataStore:
        return wiring.build_metadata(load_settings(data_dir=self.data_dir))


class BatchQueueResource(ConfigurableResource):
    """The batch queue (Service Bus in Azure; SQLite locally)."""

    data_dir: str
    lock_seconds: float = 60.0
    max_delivery_count: int = 10

    def client(self) -> BatchQueue:
        return wiring.build_queue(
            load_settings(
                data_dir=self.data_dir,
                queue_lock_seconds=self.lock_seconds,
                queue_max_delivery_count=self.max_delivery_count,
            )
        )


class SignalResource(ConfigurableResource):
    """The "messages waiting" signal (Event Grid in Azure; files locally)."""

    data_dir: str

    def client(self) -> Signal:
        return wiring.build_signal(load_settings(data_dir=self.data_dir))


class ResultStreamResource(ConfigurableResource):
    """The results topic on Kafka."""

    bootstrap: str
    topic: str

    def client(self) -> ResultStream:
        return wiring.build_results(load_settings(kafka_bootstrap=self.bootstrap, kafka_topic=self.topic))


class ProcessingResource(ConfigurableResource):
    """How a run processes images: worker processes (each with a time and memory limit per image) and
    the image core's limits and outputs. Defaults match ``assets.core.config``."""

    workers: int = 0
    max_pixels: int = 50_000_000
    max_edge: int = 20_000
    max_frames: int = 500
    max_metadata_bytes: int = 1024 * 1024
    timeout_seconds: float = 10.0
    memory_limit_mb: int = 1024
    output_formats: list[str] = ["JPEG", "WEBP"]
    webp_method: int = 4
    keep_exif: list[str] = ["copyright", "artist"]
    include_gps: bool = False
    animated: str = "first_frame"

    def effective_workers(self) -> int:
        from assets.core.pool import default_workers

        return self.workers or default_workers()

    def core_config(self):
        from assets.core.config import DEFAULT_RENDITIONS, CoreConfig, Limits, RenditionSpec

        return CoreConfig(
            renditions=tuple(RenditionSpec(r.name, r.long_edge, tuple(self.output_formats)) for r in DEFAULT_RENDITIONS),
            limits=Limits(
                max_pixels=self.max_pixels, max_edge=self.max_edge, max_frames=self.max_frames,
                max_metadata_bytes=self.max_metadata_bytes, timeout_seconds=self.timeout_seconds,
                memory_limit_mb=self.memory_limit_mb,
            ),
            webp_method=self.webp_method,
            keep_exif=tuple(self.keep_exif),
            include_gps=self.include_gps,
            animated=self.animated,
        )


def resources_from_settings(settings: Settings | None = None) -> dict[str, ConfigurableResource]:
    s = check_profile(settings or load_settings())
    data_dir = str(s.data_dir)
    return {
        "lake": LakeResource(data_dir=data_dir, soft_delete_days=s.lake_soft_delete_days),
        "metadata": MetadataStoreResource(data_dir=data_dir),
        "queue": BatchQueueResource(
            data_dir=data_dir, lock_seconds=s.queue_lock_seconds, max_delivery_count=s.queue_max_delivery_count
        ),
        "signal": SignalResource(data_dir=data_dir),
        "results": ResultStreamResource(bootstrap=s.kafka_bootstrap, topic=s.kafka_topic),
        "processing": ProcessingResource(
            workers=s.workers,
            max_pixels=s.max_pixels,
            max_edge=s.max_edge,
            max_frames=s.max_frames,
            max_metadata_bytes=s.max_image_metadata_bytes,
            timeout_seconds=s.image_timeout_seconds,
            memory_limit_mb=s.worker_memory_mb,
            output_formats=s.output_formats.split(","),
            webp_method=s.webp_method,
            keep_exif=[n for n in s.keep_exif.split(",") if n],
            include_gps=s.include_gps,
            animated=s.animated,
        ),
    }
