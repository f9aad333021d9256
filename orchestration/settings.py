"""All configuration, in one place: ``Settings``, read from ``IMGPIPE_*`` environment variables (the table
in docs/configuration.md lists every field; a test keeps the two in step). The local stack's own settings
(ports, dev users) are ``orchestration.devtools.dev_settings.DevSettings``, a subclass.

- Every environment variable the code reads is a field here; nothing else reads ``os.environ``.
- The image core's defaults are written once, in ``assets.core.config``; the fields below take their
  defaults from there and ``core_config()`` builds the core's ``CoreConfig`` back from them.
- Secrets are ``SecretStr``: ``repr``/``str``/logs show ``**********``; ``.get_secret_value()`` is
  called only where a client is built (``orchestration.wiring``).
- Dagster resources are built from Settings in code and take no run config, so nothing here can be
  changed by whoever launches a run in the Dagster UI (see ``orchestration.resources``).

Every piece of local state lives under one data dir (``IMGPIPE_DATA_DIR``), outside the source tree:

    <data_dir>/lake/            local Lake adapter (ADLS Gen2 stand-in), with .deleted/ for soft deletes
    <data_dir>/metadata.sqlite  local MetadataStore adapter (Cosmos DB stand-in)
    <data_dir>/queue.sqlite     local BatchQueue adapter (Service Bus stand-in)
    <data_dir>/signals/         local Signal adapter (Event Grid stand-in)
    <data_dir>/dagster_home/    DAGSTER_HOME of the local stack (runs, event logs, schedules)
    <data_dir>/logs/            logs of the processes `imgpipe dev` starts
    <data_dir>/stack.json       endpoints of a running `imgpipe dev --profile emulated` (read by a second shell)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from assets.core.config import DEFAULT_RENDITIONS, CoreConfig, Limits, RenditionSpec
from assets.core.facts import COPYABLE_EXIF
from assets.core.pool import default_workers

Profile = Literal["local", "emulated", "azure"]
KafkaSecurity = Literal["plaintext", "eventhubs", "eventhubs_connection_string", "sasl_ssl"]
Animated = Literal["first_frame", "reject"]
OutputFormat = Literal["JPEG", "WEBP", "AVIF", "PNG"]
UnderstandingBackend = Literal["local", "azure", "off"]
PROFILES: tuple[str, ...] = Profile.__args__  # type: ignore[attr-defined]

_LIMITS = Limits()
_CORE = CoreConfig()
STACK_FILE = "stack.json"


class ConfigurationError(ValueError):
    """A setting the chosen profile needs is missing or wrong; the message names the variable."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "imgpipe"


def _csv(value):
    """'A, b,c' → ('A', 'b', 'c'); lists pass through (an env var is a comma-separated list)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return tuple(value)


CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(_csv)]  # IMGPIPE_X="a, b" -> ("a", "b")
AbsolutePath = Annotated[Path, AfterValidator(lambda path: path.expanduser().resolve())]

# -- run pod sizes (IMGPIPE_RUN_SIZE_BANDS; the choice is orchestration.domain.sizing) --------------------

_CPU = re.compile(r"^(?:[0-9]+m|[0-9]+(?:\.[0-9]{1,3})?)$")
_MEMORY = re.compile(r"^[0-9]+(Mi|Gi)$")


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity ('500m', '0.5', '2') in cores."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_mib(quantity: str) -> int:
    """A Kubernetes memory quantity in Mi or Gi ('512Mi', '2Gi') in MiB."""
    return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)


def _quantity(pattern: re.Pattern, amount, example: str):
    def check(value):
        text = str(value)  # JSON numbers (2, 0.5) are CPU quantities too
        if not pattern.match(text) or amount(text) <= 0:
            raise ValueError(f"{value!r} is not a positive quantity like {example}")
        return text
    return BeforeValidator(check)


CpuQuantity = Annotated[str, _quantity(_CPU, cpu_cores, "'500m', '0.5' or '2'")]
MemoryQuantity = Annotated[str, _quantity(_MEMORY, memory_mib, "'512Mi' or '2Gi'")]


class SizeBand(BaseModel):
    """One run-pod size: batches of at most ``max_images`` images *and* ``max_bytes`` bytes (None: no bound)
    get ``cpu``/``memory`` requested (limits default to the requests) and one image worker per requested
    CPU (at least one), on the node pool ``pool`` (label ``imgpipe.io/pool=<pool>``, taint
    ``imgpipe.io/<pool>=true:NoSchedule``; None: the run launcher's own placement)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$")
    max_images: int | None = Field(None, ge=1)
    max_bytes: int | None = Field(None, ge=1)
    cpu: CpuQuantity
    memory: MemoryQuantity
    cpu_limit: CpuQuantity | None = None
    memory_limit: MemoryQuantity | None = None
    pool: str | None = Field(None, pattern=r"^[a-z][a-z0-9]{0,11}$")  # an AKS node pool name

    @property
    def workers(self) -> int:
        """Image workers to match: one per requested CPU, at least one."""
        return max(1, int(cpu_cores(self.cpu)))

    @property
    def requests(self) -> dict[str, str]:
        return {"cpu": self.cpu, "memory": self.memory}

    @property
    def limits(self) -> dict[str, str]:
        return {"cpu": self.cpu_limit or self.cpu, "memory": self.memory_limit or self.memory}

    @model_validator(mode="after")
    def _limits_cover_requests(self):
        limits = self.limits
        if cpu_cores(limits["cpu"]) < cpu_cores(self.cpu) or memory_mib(limits["memory"]) < memory_mib(self.memory):
            raise ValueError(f"band {self.name!r}: a limit is below its request")
        return self


def _bounds(band: SizeBand) -> tuple[float, float]:
    return (band.max_images or float("inf"), band.max_bytes or float("inf"))


def check_bands(bands: tuple[SizeBand, ...]) -> tuple[SizeBand, ...]:
    """Smallest first, each band's bounds at or above the previous band's and not both equal, distinct names;
    the last band has no bound, so that every batch has one."""
    if not bands:
        raise ValueError("at least one band is needed")
    if len({b.name for b in bands}) < len(bands):
        raise ValueError(f"band names repeat: {[b.name for b in bands]}")
    for smaller, larger in zip(bands, bands[1:]):
        low, high = _bounds(smaller), _bounds(larger)
        if any(h < lo for lo, h in zip(low, high)) or low == high:
            raise ValueError(f"bands must ascend: {larger.name!r} (max_images {larger.max_images}, max_bytes "
                             f"{larger.max_bytes}) is not above {smaller.name!r} (max_images {smaller.max_images}, "
                             f"max_bytes {smaller.max_bytes})")
    if _bounds(bands[-1]) != (float("inf"), float("inf")):
        raise ValueError(f"the last band ({bands[-1].name!r}) must have no max_images or max_bytes: "
                         f"every batch needs a band")
    return bands


# Sized for the run pool's Standard_D4ds_v5 nodes (deploy/azure: 4 vCPU / 16 GiB, about 3.86 CPU allocatable
# before the node's daemon sets): the largest pod leaves room for those. Memory limits hold every worker at
# its address-space cap (IMGPIPE_WORKER_MEMORY_MB) plus the run process (check_profile).
DEFAULT_SIZE_BANDS = (
    SizeBand(name="small", max_images=8, max_bytes=64 * 1024**2, cpu="500m", memory="1Gi", cpu_limit="1",
             memory_limit="2Gi", pool="runs"),
    SizeBand(name="medium", max_images=100, max_bytes=1024**3, cpu="2", memory="2Gi", memory_limit="4Gi",
             pool="runs"),
    SizeBand(name="large", cpu="3", memory="6Gi", memory_limit="8Gi", pool="runs"),
)
RUN_PROCESS_MIB = 512  # the run worker itself (Dagster, the code, the understanding models' client or models)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMGPIPE_", extra="ignore", frozen=True)

    profile: Profile = Field("local", description="Which adapters: local | emulated | azure.")
    data_dir: AbsolutePath = Field(default_factory=_default_data_dir, description="Root of all local state.")

    # Intake limits
    max_file_bytes: int = Field(_LIMITS.max_file_bytes, gt=0, description="Larger uploads are refused (and the core "
                                "refuses them too: it gets the same limit).")
    max_files_per_batch: int = Field(500, gt=0, description="Files per batch.")
    max_metadata_bytes: int = Field(16 * 1024, gt=0, description="Size cap of the user's key/value metadata.")
    max_zip_bytes: int = Field(200 * 1000 * 1000, gt=0, description="Most bytes one ZIP download of the web app "
                               "holds (it is made in the web app's memory; the pod has 1 GiB).")

    # Queue (Service Bus semantics)
    queue_lock_seconds: float = Field(60.0, gt=0, description="Peek-lock duration.")
    queue_max_delivery_count: int = Field(10, gt=0, description="Deliveries before automatic dead-letter.")
    queue_duplicate_window_seconds: float = Field(600.0, ge=0, description="Duplicate detection window.")

    # Lake (ADLS Gen2 semantics)
    lake_soft_delete_days: float = Field(7.0, gt=0, description="Soft-delete retention before purge.")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:19092", description="host:port of the Kafka broker.")
    kafka_topic: str = Field("imgpipe.results", description="Topic the results are published to.")
    kafka_security: KafkaSecurity = Field("plaintext", description="plaintext | eventhubs (Entra ID) | "
                                          "eventhubs_connection_string (development only) | sasl_ssl.")
    eventhubs_namespace: str = Field("", pattern=r"^([A-Za-z0-9-]+\.)+[A-Za-z]{2,}$|^$",
                                     description="<namespace>.servicebus.windows.net of Event Hubs "
                                     "(kafka_security=eventhubs; DefaultAzureCredential).")
    eventhubs_connection_string: SecretStr = Field(SecretStr(""), description="Event Hubs connection string "
                                                   "(kafka_security=eventhubs_connection_string; development "
                                                   "only).")
    kafka_username: str = Field("", description="SASL user (kafka_security=sasl_ssl).")
    kafka_password: SecretStr = Field(SecretStr(""), description="SASL password (kafka_security=sasl_ssl).")

    # Azure (profiles 'emulated' and 'azure'); see docs/configuration.md "What each profile needs"
    storage_connection_string: SecretStr = Field(SecretStr(""), description="Storage account (lake + signal queue) "
                                                 "connection string; emulators only.")
    storage_account_url: str = Field("", description="https://<account>.blob.core.windows.net (DefaultAzureCredential).")
    lake_container: str = Field("lake", description="File system (container) of the lake.")
    adls_hns: bool = Field(False, description="The account has a hierarchical namespace (ADLS Gen2).")
    signal_queue: str = Field("batch-signals", description="Storage queue Event Grid delivers Service Bus events to.")
    cosmos_endpoint: str = Field("", description="https://<account>.documents.azure.com:443/")
    cosmos_key: SecretStr = Field(SecretStr(""), description="Cosmos DB key; empty = DefaultAzureCredential.")
    cosmos_database: str = Field("imgpipe", description="Cosmos DB database.")
    cosmos_verify_tls: bool = Field(True, description="Verify the Cosmos DB certificate (false only for a local "
                                    "test server).")
    servicebus_connection_string: SecretStr = Field(SecretStr(""), description="Service Bus connection string.")
    servicebus_namespace: str = Field("", description="<namespace>.servicebus.windows.net (DefaultAzureCredential).")
    servicebus_queue: str = Field("batches", description="Service Bus queue of batch manifests.")

    # Intake reconciler (sensors/reconcile_sensor.py)
    reconcile_after_seconds: float = Field(120.0, gt=0, description="A batch 'received' this long without a run "
                                           "is handed to the queue again.")
    reconcile_max_attempts: int = Field(5, ge=1, description="Re-sends before such a batch ends 'failed' with the "
                                        "reason.")
    # Events sensor (sensors/events_sensor.py)
    events_retry_max_hours: float = Field(24.0, gt=0, description="How long the events of a completed batch are "
                                          "retried while the broker is unreachable before they are given up "
                                          "(`imgpipe status` shows the state).")

    # Recovery
    run_max_retries: int = Field(2, ge=0, description="Automatic re-executions (from failure) of a failed batch run "
                                 "before the batch ends 'failed'.")

    # Sensor
    sensor_interval_seconds: int = Field(1, ge=1, description="Minimum time between two sensor ticks.")
    sensor_safety_poll_seconds: float = Field(
        30.0, gt=0, description="Receive from the queue at least this often even without a signal."
    )

    # Run pods (Kubernetes): sized by their batch (orchestration/domain/sizing.py, docs/operations.md)
    run_launcher: Literal["local", "k8s"] = Field("local", description="How runs are launched: 'local' (processes "
                                                  "of this machine) or 'k8s' (a pod per run, K8sRunLauncher): then "
                                                  "the batch sensor sizes each run's pod by its batch.")
    run_size_bands: Annotated[tuple[SizeBand, ...], NoDecode] = Field(
        DEFAULT_SIZE_BANDS, description="Run pod sizes as JSON, smallest first; a batch gets the first band it fits.")

    # Fan-out of very large batches (docs/operations.md "Fan-out of very large batches")
    fanout_min_images: int = Field(1000, ge=1, description="A batch with at least this many images runs the "
                                   "job process_batch_fanout: its renditions step fans out in chunks, each its own "
                                   "step (a process locally, a pod on Kubernetes).")
    fanout_chunk_images: int = Field(250, ge=1, description="Images per chunk of a fanned-out batch: few, long "
                                     "chunks (minutes each), not one step per image.")
    fanout_max_concurrent: int = Field(4, ge=1, description="Steps (chunks) of one fanned-out run running at once "
                                       "(the executor's max_concurrent; on AKS the concurrency pool "
                                       "imgpipe-chunks also bounds all runs together).")

    # Processing: the image core's limits and outputs; defaults are the core's own (assets/core/config.py)
    workers: int = Field(0, ge=0, description="Image worker processes per batch run; 0 = number of CPUs.")
    max_pixels: int = Field(_LIMITS.max_pixels, gt=0, description="Largest source image, width x height.")
    max_edge: int = Field(_LIMITS.max_edge, gt=0, description="Largest source side in pixels.")
    max_frames: int = Field(_LIMITS.max_frames, gt=0, description="Most frames in an animation (the first is used).")
    max_image_metadata_bytes: int = Field(_LIMITS.max_metadata_bytes, gt=0,
                                          description="Largest EXIF / ICC / text block.")
    image_timeout_seconds: float = Field(_LIMITS.timeout_seconds, gt=0, description="Time limit per image.")
    worker_memory_mb: int = Field(_LIMITS.memory_limit_mb, ge=256, description="Address-space cap of an image "
                                  "worker process.")
    image_worker_server: str = Field("", description="Unix socket of an image worker server "
                                     "(assets/core/worker_server.py) that batch runs fork their image workers "
                                     "from; set by the local stack's code server for its run workers. Empty: "
                                     "each run starts its own.")
    output_formats: Annotated[tuple[OutputFormat, ...], NoDecode] = Field(
        DEFAULT_RENDITIONS[0].formats, min_length=1, description="Formats of every rendition (JPEG, WEBP, AVIF, PNG).")
    webp_method: int = Field(_CORE.webp_method, ge=0, le=6, description="WebP encoder effort.")
    keep_exif: CommaList = Field(_CORE.keep_exif, description="EXIF tags copied into renditions ('' = none).")
    include_gps: bool = Field(_CORE.include_gps, description="Record GPS position in the image facts.")
    animated: Animated = Field(_CORE.animated, description="'first_frame' or 'reject' for animated inputs.")

    # Image understanding: labels, moderation, faces (docs/understanding.md)
    understanding: UnderstandingBackend = Field("local", description="Who tells what each image shows: 'local' "
                                                "(models on the image workers' CPUs, or CUDA), 'azure' (Azure AI "
                                                "Vision + Content Safety) or 'off'.")
    understanding_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the local models run: "
                                                                 "'auto' uses a CUDA device when onnxruntime has one.")
    moderation_review_threshold: float = Field(0.4, gt=0, le=1, description="A moderation score (0..1) at or above "
                                               "this puts the image on the operators' review list.")
    moderation_flag_threshold: float = Field(0.8, gt=0, le=1, description="A moderation score at or above this "
                                             "flags the image (and lists it for review).")
    moderation_action: Literal["blur", "withhold"] = Field("blur", description="What a flagged image does on its "
                                                           "owner's pages: 'blur' (shown blurred behind a click) or "
                                                           "'withhold' (not shown until an operator keeps it).")
    face_min_score: float = Field(0.6, gt=0, lt=1, description="Least detector score for a face to count "
                                  "(local model).")
    vision_endpoint: str = Field("", description="https://<account>.cognitiveservices.azure.com/ of Azure AI Vision "
                                 "(IMGPIPE_UNDERSTANDING=azure; DefaultAzureCredential).")
    content_safety_endpoint: str = Field("", description="https://<account>.cognitiveservices.azure.com/ of Azure AI "
                                         "Content Safety (IMGPIPE_UNDERSTANDING=azure; DefaultAzureCredential).")
    understanding_parallel: int = Field(8, ge=1, le=64, description="Requests in flight to Azure AI Vision and "
                                        "Content Safety per step (IMGPIPE_UNDERSTANDING=azure): about the accounts' "
                                        "rate limit (S1: 20 per second) times a request's latency.")

    # Who may sign in, and who is an operator (see orchestration/domain/identity.py)
    oidc_issuers: CommaList = Field((), description="Accepted token issuers (iss), e.g. "
                                    "https://login.microsoftonline.com/<tenant id>/v2.0; empty = nobody can sign in.")
    operator_claim: str = Field("roles", min_length=1, description="Token claim that carries roles (Entra app roles: "
                                "roles).")
    operator_role: str = Field("imgpipe.operator", min_length=1, description="Role that makes an operator (sees "
                               "everyone's statistics).")
    operator_recheck_minutes: float = Field(15.0, gt=0, description="The operator role counts only this long after "
                                            "sign-in; then the person signs in again, so a role removed at the "
                                            "provider stops working within this time.")

    # Per-user limits, checked at intake (web app and CLI alike)
    max_batches_in_flight: int = Field(20, ge=1, description="A user's batches received or processing at once.")
    max_bytes_per_day: int = Field(5 * 1024**3, ge=1, description="Bytes a user may upload per UTC day.")
    max_runs_per_user: int = Field(1, ge=1, description="A user's batch runs running at once (the run queue's "
                                   "per-user limit on the imgpipe/user_id tag; others' batches go first).")

    dagster_ui_url: str = Field("http://127.0.0.1:3000", description="The Dagster webserver's address: run links in "
                                "`imgpipe lineage`, backfills of `imgpipe reprocess` and the termination of a deleted "
                                "batch's runs (its GraphQL API). `imgpipe dev` sets it to its own.")
    dagster_api_url: str = Field("", description="Where processes reach the webserver's GraphQL API when not at "
                                 "IMGPIPE_DAGSTER_UI_URL (on AKS: its in-cluster service; the UI's address is "
                                 "behind sign-in). Empty: IMGPIPE_DAGSTER_UI_URL.")

    @field_validator("output_formats", mode="before")
    @classmethod
    def _formats(cls, value):
        return tuple(f.upper() for f in _csv(value))

    @field_validator("run_size_bands", mode="before")
    @classmethod
    def _bands_json(cls, value):
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("run_size_bands")
    @classmethod
    def _bands(cls, value):
        return check_bands(value)

    @field_validator("keep_exif", mode="before")
    @classmethod
    def _keep_exif(cls, value):
        names = tuple(n.lower() for n in _csv(value))
        unknown = [n for n in names if n not in COPYABLE_EXIF]
        if unknown:
            raise ValueError(f"keep_exif {unknown}: allowed are {sorted(COPYABLE_EXIF)}")
        return names

    # -- derived paths and objects (nothing here is a second default) ----------------------------

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
    def stack_file(self) -> Path:
        return self.data_dir / STACK_FILE

    @property
    def effective_workers(self) -> int:
        """The one rule for the number of image workers: the setting, else the core's default."""
        return self.workers or default_workers()

    def core_config(self) -> CoreConfig:
        """The image core's configuration from these settings; what is not a setting keeps the core's default."""
        return CoreConfig(
            renditions=tuple(RenditionSpec(r.name, r.long_edge, self.output_formats) for r in DEFAULT_RENDITIONS),
            limits=Limits(
                max_pixels=self.max_pixels, max_edge=self.max_edge, max_file_bytes=self.max_file_bytes,
                max_frames=self.max_frames, max_metadata_bytes=self.max_image_metadata_bytes,
                timeout_seconds=self.image_timeout_seconds, memory_limit_mb=self.worker_memory_mb,
            ),
            webp_method=self.webp_method,
            keep_exif=self.keep_exif,
            include_gps=self.include_gps,
            animated=self.animated,
        )

    def to_env(self) -> dict[str, str]:
        """Every setting as its ``IMGPIPE_*`` variable (secrets included, for child processes only)."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue  # unset stays unset
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if isinstance(value, bool):
                text = str(value).lower()
            elif isinstance(value, tuple) and value and isinstance(value[0], BaseModel):
                text = json.dumps([v.model_dump(exclude_none=True) for v in value])
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            env[f"IMGPIPE_{name.upper()}"] = text
        return env


def web_server_options(settings: Settings) -> dict[str, str]:
    """The Streamlit server options of the web app, the same in every launcher (`imgpipe dev`,
    deploy/k8s/webapp.yaml, the image test; tests/test_web_limits.py compares them):
    - ``server.maxUploadSize``: Streamlit refuses a larger file itself (MB per file, from
      IMGPIPE_MAX_FILE_BYTES), before the page sees it, whoever sends it; its default is 200 MB against
      the pod's 1 GiB;
    - ``client.showErrorDetails = none``: no traceback (server paths, internal addresses) reaches a
      person; pages catch their own failures (ui_streamlit/guard.py) and the details go to the log;
    - ``client.toolbarMode = viewer``: no developer menus ("Deploy", rerun settings) for users;
    - ``runner.magicEnabled = false``: see orchestration/devtools/webstack.py;
    - ``theme``: a light theme with near-black text, so that captions (drawn at 60 % opacity) keep 4.5:1
      contrast (WCAG AA; Streamlit's default grey gives 3.9:1);
    - XSRF protection on, no usage statistics, headless."""
    return {
        "server.headless": "true",
        "browser.gatherUsageStats": "false",
        "server.enableXsrfProtection": "true",
        "server.maxUploadSize": str(max(1, -(-settings.max_file_bytes // (1024 * 1024)))),
        "client.showErrorDetails": "none",
        "client.toolbarMode": "viewer",
        "runner.magicEnabled": "false",
        "theme.base": "light",
        "theme.textColor": "#111111",
    }


def env_var(field_name: str) -> str:
    return f"IMGPIPE_{field_name.upper()}"


def check_profile(settings: Settings) -> Settings:
    """Fail at start-up, naming each missing variable, instead of at the first batch."""
    missing: list[str] = []
    if settings.profile in ("emulated", "azure"):
        if not (settings.storage_connection_string.get_secret_value() or settings.storage_account_url):
            missing.append("IMGPIPE_STORAGE_CONNECTION_STRING or IMGPIPE_STORAGE_ACCOUNT_URL (lake and signal queue)")
        if not settings.cosmos_endpoint:
            missing.append("IMGPIPE_COSMOS_ENDPOINT (metadata store)")
    if settings.profile == "azure":
        if not (settings.servicebus_connection_string.get_secret_value() or settings.servicebus_namespace):
            missing.append("IMGPIPE_SERVICEBUS_CONNECTION_STRING or IMGPIPE_SERVICEBUS_NAMESPACE (batch queue)")
    if settings.understanding == "azure":
        if not settings.vision_endpoint:
            missing.append("IMGPIPE_VISION_ENDPOINT (IMGPIPE_UNDERSTANDING=azure)")
        if not settings.content_safety_endpoint:
            missing.append("IMGPIPE_CONTENT_SAFETY_ENDPOINT (IMGPIPE_UNDERSTANDING=azure)")
    if settings.moderation_review_threshold > settings.moderation_flag_threshold:
        missing.append("IMGPIPE_MODERATION_REVIEW_THRESHOLD <= IMGPIPE_MODERATION_FLAG_THRESHOLD")
    for band in settings.run_size_bands:
        if memory_mib(band.limits["memory"]) < band.workers * settings.worker_memory_mb + RUN_PROCESS_MIB:
            missing.append(f"IMGPIPE_RUN_SIZE_BANDS: band {band.name!r}'s memory limit {band.limits['memory']} < "
                           f"{band.workers} worker(s) × IMGPIPE_WORKER_MEMORY_MB {settings.worker_memory_mb} MiB "
                           f"+ {RUN_PROCESS_MIB} MiB for the run process")
    if settings.kafka_security == "eventhubs" and not settings.eventhubs_namespace:
        missing.append("IMGPIPE_EVENTHUBS_NAMESPACE (IMGPIPE_KAFKA_SECURITY=eventhubs signs in with Entra ID; "
                       "a connection string needs IMGPIPE_KAFKA_SECURITY=eventhubs_connection_string)")
    if settings.kafka_security == "eventhubs_connection_string" and \
            not settings.eventhubs_connection_string.get_secret_value():
        missing.append("IMGPIPE_EVENTHUBS_CONNECTION_STRING (IMGPIPE_KAFKA_SECURITY=eventhubs_connection_string)")
    if settings.kafka_security == "sasl_ssl" and not (
            settings.kafka_username and settings.kafka_password.get_secret_value()):
        missing.append("IMGPIPE_KAFKA_USERNAME and IMGPIPE_KAFKA_PASSWORD (IMGPIPE_KAFKA_SECURITY=sasl_ssl)")
    if missing:
        hint = ""
        if settings.profile == "emulated" and not settings.cosmos_endpoint:
            hint = (f"\n(no running `imgpipe dev --profile emulated` was found for data dir {settings.data_dir}: "
                    f"start one, or point IMGPIPE_DATA_DIR at its data dir)")
        raise ConfigurationError(
            f"profile {settings.profile!r} is not fully configured:\n  " + "\n  ".join(missing) + hint)
    return settings


def describe_validation_error(exc: ValidationError) -> str:
    """A pydantic error as one line per variable, without echoing the value (it may be a secret)."""
    return "\n".join(f"  {env_var('_'.join(map(str, e['loc'])))}: {e['msg']}" for e in exc.errors())


# -- the endpoints file of a running emulated stack ------------------------------------------------

def write_stack_file(settings: Settings, values: dict[str, object], *, pid: int) -> Path:
    """Record the endpoints `imgpipe dev` started (emulators on free ports) so that `imgpipe upload` and
    `imgpipe status` in a second shell with the same data dir find them. Owner-only (0600): it holds the
    emulators' public development keys, never a real secret."""
    path = settings.stack_file
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"pid": pid, "settings": {k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
                                     for k, v in values.items()}}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, default=str)
    os.replace(tmp, path)
    return path


def remove_stack_file(settings: Settings, *, pid: int) -> None:
    try:
        if json.loads(settings.stack_file.read_text()).get("pid") == pid:
            settings.stack_file.unlink()
    except (OSError, ValueError):
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stack_values(data_dir: Path, fields) -> dict:
    try:
        data = json.loads((data_dir / STACK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not _alive(int(data.get("pid", 0) or 0)):
        return {}
    return {k: v for k, v in (data.get("settings") or {}).items() if k in fields}


def load_settings(settings_class: type[Settings] | None = None, **overrides) -> Settings:
    """Settings from the environment; ``overrides`` win (used by tests and the CLI).

    When a live `imgpipe dev` wrote ``<data_dir>/stack.json``, its endpoints fill in whatever neither the
    environment nor ``overrides`` set, so a second shell with the same data dir reaches the same stack."""
    cls = settings_class or Settings
    settings = cls(**overrides)
    stack = {k: v for k, v in _stack_values(settings.data_dir, cls.model_fields).items()
             if k not in settings.model_fields_set}
    if not stack:
        return settings
    return cls(**{**stack, **overrides})
