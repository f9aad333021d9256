"""All configuration, read from ``IMGPIPE_*`` environment variables (table in README.md).

Every piece of state lives under one data dir (``IMGPIPE_DATA_DIR``), outside the source tree:

    <data_dir>/lake/            local Lake adapter (ADLS Gen2 stand-in), with .deleted/ for soft deletes
    <data_dir>/metadata.sqlite  local MetadataStore adapter (Cosmos DB stand-in)
    <data_dir>/queue.sqlite     local BatchQueue adapter (Service Bus stand-in)
    <data_dir>/signals/         local Signal adapter (Event Grid stand-in)
    <data_dir>/dagster_home/    DAGSTER_HOME of the local stack (runs, event logs, schedules)
    <data_dir>/logs/            logs of the processes `imgpipe dev` starts
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


PROFILES = ("local", "emulated", "azure")


class ConfigurationError(ValueError):
    """A setting the chosen profile needs is missing or wrong; the message names the variable."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imgpipe"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGPIPE_", extra="ignore", frozen=True)

    profile: str = Field("local", description="Which adapters: local | emulated | azure.")
    data_dir: Path = Field(default_factory=default_data_dir, description="Root of all local state.")

    # Intake limits
    max_file_bytes: int = Field(50 * 1024 * 1024, gt=0, description="Larger uploads are refused.")
    max_files_per_batch: int = Field(500, gt=0)
    max_metadata_bytes: int = Field(16 * 1024, gt=0, description="Size cap of the user's key/value metadata.")

    # Queue (Service Bus semantics)
    queue_lock_seconds: float = Field(60.0, gt=0, description="Peek-lock duration.")
    queue_max_delivery_count: int = Field(10, gt=0, description="Deliveries before automatic dead-letter.")
    queue_duplicate_window_seconds: float = Field(600.0, ge=0, description="Duplicate detection window.")

    # Lake (ADLS Gen2 semantics)
    lake_soft_delete_days: float = Field(7.0, gt=0, description="Soft-delete retention before purge.")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="host:port of the Kafka broker.")
    kafka_topic: str = Field("imgpipe.results", description="Topic the results are published to.")

    kafka_security: str = Field("plaintext", description="plaintext | eventhubs | sasl_ssl.")
    eventhubs_connection_string: str = Field("", description="Event Hubs connection string (kafka_security=eventhubs).")
    kafka_username: str = Field("", description="SASL user (kafka_security=sasl_ssl).")
    kafka_password: str = Field("", description="SASL password (kafka_security=sasl_ssl).")

    # Azure (profiles 'emulated' and 'azure'); see README "Profiles"
    storage_connection_string: str = Field("", description="Storage account (lake + signal queue) connection string.")
    storage_account_url: str = Field("", description="https://<account>.blob.core.windows.net (DefaultAzureCredential).")
    lake_container: str = Field("lake", description="File system (container) of the lake.")
    adls_hns: bool = Field(False, description="The account has a hierarchical namespace (ADLS Gen2).")
    signal_queue: str = Field("batch-signals", description="Storage queue Event Grid delivers Service Bus events to.")
    cosmos_endpoint: str = Field("", description="https://<account>.documents.azure.com:443/")
    cosmos_key: str = Field("", description="Cosmos DB key; empty = DefaultAzureCredential.")
    cosmos_database: str = Field("imgpipe", description="Cosmos DB database.")
    cosmos_verify_tls: bool = Field(True, description="Verify the Cosmos DB certificate (false only for a local test server).")
    servicebus_connection_string: str = Field("", description="Service Bus connection string.")
    servicebus_namespace: str = Field("", description="<namespace>.servicebus.windows.net (DefaultAzureCredential).")
    servicebus_queue: str = Field("batches", description="Service Bus queue of batch manifests.")

    # Sensor
    sensor_interval_seconds: int = Field(1, ge=1, description="Minimum time between two sensor ticks.")
    sensor_safety_poll_seconds: float = Field(
        30.0, gt=0, description="Receive from the queue at least this often even without a signal."
    )

    # Processing (the image core's limits and outputs; see assets/core/config.py)
    workers: int = Field(0, ge=0, description="Image worker processes per batch run; 0 = number of CPUs.")
    max_pixels: int = Field(50_000_000, gt=0, description="Largest source image, width x height.")
    max_edge: int = Field(20_000, gt=0, description="Largest source side in pixels.")
    max_frames: int = Field(500, gt=0, description="Most frames in an animation (the first is used).")
    max_image_metadata_bytes: int = Field(1024 * 1024, gt=0, description="Largest EXIF / ICC / text block.")
    image_timeout_seconds: float = Field(10.0, gt=0, description="Time limit per image.")
    worker_memory_mb: int = Field(1024, ge=256, description="Address-space cap of an image worker process.")
    output_formats: str = Field("JPEG,WEBP", description="Formats of every rendition (JPEG, WEBP, AVIF, PNG).")
    webp_method: int = Field(4, ge=0, le=6, description="WebP encoder effort.")
    keep_exif: str = Field("copyright,artist", description="EXIF tags copied into renditions ('' = none).")
    include_gps: bool = Field(False, description="Record GPS position in the image facts.")
    animated: str = Field("first_frame", description="'first_frame' or 'reject' for animated inputs.")

    # Local stack
    webserver_port: int = Field(3000, gt=0, lt=65536, description="Dagster UI port of `imgpipe dev`.")
    web: bool = Field(True, description="`imgpipe dev` also starts the web app and a local OIDC provider.")
    web_port: int = Field(8501, gt=0, lt=65536, description="Web app port of `imgpipe dev`.")
    oidc_port: int = Field(9400, gt=0, lt=65536, description="Port of the local OIDC provider of `imgpipe dev`.")
    dev_users: str = Field("alice@example.com,bob@example.com", description="Users the local OIDC provider offers.")

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        if value not in PROFILES:
            raise ValueError(f"IMGPIPE_PROFILE={value!r} is not a known profile (known: {', '.join(PROFILES)})")
        return value

    @field_validator("output_formats")
    @classmethod
    def _formats(cls, value: str) -> str:
        from assets.core.config import OUTPUT_FORMATS

        formats = [f.strip().upper() for f in value.split(",") if f.strip()]
        unknown = [f for f in formats if f not in OUTPUT_FORMATS]
        if not formats or unknown:
            raise ValueError(f"output formats {value!r}: use a comma-separated subset of {sorted(OUTPUT_FORMATS)}")
        return ",".join(formats)

    @field_validator("keep_exif")
    @classmethod
    def _keep_exif(cls, value: str) -> str:
        from assets.core.facts import COPYABLE_EXIF

        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in COPYABLE_EXIF]
        if unknown:
            raise ValueError(f"keep_exif {unknown}: allowed are {sorted(COPYABLE_EXIF)}")
        return ",".join(names)

    @field_validator("animated")
    @classmethod
    def _animated(cls, value: str) -> str:
        if value not in ("first_frame", "reject"):
            raise ValueError("must be 'first_frame' or 'reject'")
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def lake_dir(self) -> Path:
        return self.data_dir / "lake"

    @property
    def metadata_db(self) -> Path:
        return self.data_dir / "metadata.sqlite"

    @property
    def queue_db(self) -> Path:
        return self.data_dir / "queue.sqlite"

    @property
    def signal_dir(self) -> Path:
        return self.data_dir / "signals"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def effective_workers(self) -> int:
        return self.workers or (os.cpu_count() or 1)


def check_profile(settings: Settings) -> Settings:
    """Fail at start-up, naming each missing variable, instead of at the first batch."""
    missing: list[str] = []
    if settings.profile in ("emulated", "azure"):
        if not (settings.storage_connection_string or settings.storage_account_url):
            missing.append("IMGPIPE_STORAGE_CONNECTION_STRING or IMGPIPE_STORAGE_ACCOUNT_URL (lake and signal queue)")
        if not settings.cosmos_endpoint:
            missing.append("IMGPIPE_COSMOS_ENDPOINT (metadata store)")
    if settings.profile == "azure":
        if not (settings.servicebus_connection_string or settings.servicebus_namespace):
            missing.append("IMGPIPE_SERVICEBUS_CONNECTION_STRING or IMGPIPE_SERVICEBUS_NAMESPACE (batch queue)")
    if settings.kafka_security == "eventhubs" and not settings.eventhubs_connection_string:
        missing.append("IMGPIPE_EVENTHUBS_CONNECTION_STRING (IMGPIPE_KAFKA_SECURITY=eventhubs)")
    if settings.kafka_security == "sasl_ssl" and not (settings.kafka_username and settings.kafka_password):
        missing.append("IMGPIPE_KAFKA_USERNAME and IMGPIPE_KAFKA_PASSWORD (IMGPIPE_KAFKA_SECURITY=sasl_ssl)")
    if settings.kafka_security not in ("plaintext", "eventhubs", "sasl_ssl"):
        missing.append(f"IMGPIPE_KAFKA_SECURITY={settings.kafka_security!r} must be plaintext, eventhubs or sasl_ssl")
    if missing:
        raise ConfigurationError(f"profile {settings.profile!r} is not fully configured:\n  " + "\n  ".join(missing))
    return settings


def load_settings(**overrides) -> Settings:
    """Settings from the environment; ``overrides`` win (used by tests and the CLI)."""
    return Settings(**overrides)
