"""The composition root: builds the adapter behind each port from Settings, once per process.

| port          | local           | emulated                         | azure                          |
|---------------|-----------------|----------------------------------|--------------------------------|
| Lake          | LocalLake       | AzureLake on Azurite (Blob API)  | AzureLake on ADLS Gen2         |
| MetadataStore | SQLite          | Cosmos adapter on cosmosdb-server| Cosmos DB                      |
| BatchQueue    | SQLite          | SQLite (no Service Bus server)   | Service Bus                    |
| Signal        | files           | Storage queue on Azurite         | Event Grid → Storage queue     |
| ResultStream  | Kafka (Tansu)   | Kafka (Tansu)                    | Kafka / Event Hubs             |

ImageUnderstanding follows IMGPIPE_UNDERSTANDING, not the profile: ``local`` (onnxruntime models, the default
in every profile, none of which needs a network), ``azure`` (Azure AI Vision + Content Safety) or ``off``.

In 'emulated' the local queue posts an Event Grid-shaped event to the Storage queue on every send, as
Service Bus + Event Grid do in Azure, so the sensor reads the signal through the Azure adapter.

Lifecycle — one client per port per process
--------------------------------------------
``CLIENTS`` (a ``Clients`` registry) creates each adapter on first use and hands the same object to
every caller in the process: the Dagster resources (``orchestration.resources``) in the code server, where
every sensor tick therefore uses the same Service Bus receiver, and in a run worker; the CLI; the web app
(``st.cache_resource`` over this). Create-if-missing of databases, containers and queues happens in the
adapters' constructors, so once per process. The Kafka clients of a process share one Event Hubs token
provider (``Clients.kafka_token``: one DefaultAzureCredential, one cached token). Clients are closed by
``close_all()``, in reverse order of creation (a client before the credential it uses), which runs at process
exit (``atexit``) and which the CLI and tests call themselves. A forked child never reuses (or closes) its
parent's clients.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Callable

from orchestration.domain.services import Services
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue
from orchestration.ports.results import ResultStream
from orchestration.ports.signal import Signal
from orchestration.settings import Settings, check_profile

log = logging.getLogger(__name__)


def _secret(value) -> str:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else (value or "")


def private_data_dir(settings: Settings) -> None:
    """The local data dir holds every user's images and documents: owner-only (0700)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if settings.data_dir.stat().st_uid == os.getuid() and settings.data_dir.stat().st_mode & 0o077:
        settings.data_dir.chmod(0o700)


def kafka_options(settings: Settings, clients: "Clients | None" = None) -> dict:
    """kafka-python's security settings; with Event Hubs and Entra ID, the process's one token provider."""
    from orchestration.adapters.kafka.connection import client_options

    provider = (clients or CLIENTS).kafka_token(settings) if settings.kafka_security == "eventhubs" else None
    return client_options(settings.kafka_security, token_provider=provider,
                          eventhubs_connection_string=_secret(settings.eventhubs_connection_string),
                          username=settings.kafka_username, password=_secret(settings.kafka_password))


def kafka_bootstrap(settings: Settings) -> str:
    """host:port of the brokers; for Event Hubs it is always the namespace's Kafka endpoint (a connection
    string's own namespace, so its key cannot be sent elsewhere)."""
    from orchestration.adapters.kafka.connection import eventhubs_bootstrap, eventhubs_namespace

    if settings.kafka_security == "eventhubs":
        return eventhubs_bootstrap(settings.eventhubs_namespace)
    if settings.kafka_security == "eventhubs_connection_string":
        return eventhubs_bootstrap(eventhubs_namespace(_secret(settings.eventhubs_connection_string)))
    return settings.kafka_bootstrap


def _kafka_token_provider(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential

    from orchestration.adapters.kafka.connection import EventHubsTokenProvider

    return EventHubsTokenProvider(DefaultAzureCredential(), settings.eventhubs_namespace)


# -- the adapters, one builder per (profile, port) -----------------------------------------------------
# Each builder makes a new adapter from the settings; ``clients`` gives it the other ports it needs (the
# local queue raises the signal itself, as Service Bus + Event Grid do in Azure). Use CLIENTS to share one.

def _local_lake(settings: Settings, clients: "Clients") -> Lake:
    from orchestration.adapters.local.lake import LocalLake

    private_data_dir(settings)
    return LocalLake(settings.lake_dir, soft_delete_days=settings.lake_soft_delete_days)


def _azure_lake(settings: Settings, clients: "Clients") -> Lake:
    from orchestration.adapters.azure.lake import AzureLake

    return AzureLake.from_settings(
        container=settings.lake_container, connection_string=_secret(settings.storage_connection_string) or None,
        account_url=settings.storage_account_url or None, hns=settings.adls_hns,
        soft_delete_days=settings.lake_soft_delete_days,
    )


def _sqlite_metadata(settings: Settings, clients: "Clients") -> MetadataStore:
    from orchestration.adapters.local.metadata import SqliteMetadataStore

    private_data_dir(settings)
    return SqliteMetadataStore(settings.metadata_db)


def _cosmos_metadata(settings: Settings, clients: "Clients") -> MetadataStore:
    from orchestration.adapters.azure.cosmos import CosmosMetadataStore

    key = _secret(settings.cosmos_key)
    if key:
        credential: Any = key
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    if not settings.cosmos_verify_tls:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return CosmosMetadataStore(settings.cosmos_endpoint, credential, database=settings.cosmos_database,
                               connection_verify=settings.cosmos_verify_tls)


def _file_signal(settings: Settings, clients: "Clients") -> Signal:
    from orchestration.adapters.local.signal import FileSignal

    return FileSignal(settings.signal_dir)


def _storage_queue_signal(settings: Settings, clients: "Clients") -> Signal:
    from orchestration.adapters.azure.eventgrid import StorageQueueSignal

    connection_string = _secret(settings.storage_connection_string)
    if connection_string:
        return StorageQueueSignal.from_connection_string(connection_string, settings.signal_queue,
                                                         settings.servicebus_queue)
    from azure.identity import DefaultAzureCredential
    from azure.storage.queue import QueueClient

    queue_url = settings.storage_account_url.replace(".blob.", ".queue.")
    return StorageQueueSignal(QueueClient(queue_url, settings.signal_queue, credential=DefaultAzureCredential()),
                              settings.servicebus_queue)


def _sqlite_queue(settings: Settings, clients: "Clients") -> BatchQueue:
    from orchestration.adapters.local.queue import SqliteBatchQueue

    private_data_dir(settings)
    return SqliteBatchQueue(
        settings.queue_db,
        lock_duration_seconds=settings.queue_lock_seconds,
        max_delivery_count=settings.queue_max_delivery_count,
        duplicate_window_seconds=settings.queue_duplicate_window_seconds,
        on_send=clients.signal(settings).notify,  # the queue raises the signal, as Event Grid does in Azure
    )


def _servicebus_queue(settings: Settings, clients: "Clients") -> BatchQueue:
    from orchestration.adapters.azure.servicebus import ServiceBusQueue

    return ServiceBusQueue.from_settings(
        settings.servicebus_queue, connection_string=_secret(settings.servicebus_connection_string) or None,
        fully_qualified_namespace=settings.servicebus_namespace or None)


def _kafka_results(settings: Settings, clients: "Clients") -> ResultStream:
    from orchestration.adapters.kafka.producer import KafkaResultStream

    return KafkaResultStream(kafka_bootstrap(settings), settings.kafka_topic, options=kafka_options(settings, clients))


def _understanding(settings: Settings, clients: "Clients") -> Any:
    if settings.understanding == "azure":
        from azure.identity import DefaultAzureCredential

        from orchestration.adapters.azure.understanding import AzureUnderstanding

        return AzureUnderstanding.from_endpoints(settings.vision_endpoint, settings.content_safety_endpoint,
                                                 DefaultAzureCredential(), min_person_score=settings.face_min_score,
                                                 parallel=settings.understanding_parallel)
    if settings.understanding == "off":
        return None
    from orchestration.adapters.local.understanding import LocalUnderstanding

    return LocalUnderstanding(threads=settings.effective_workers, device=settings.understanding_device,
                              min_face_score=settings.face_min_score)


def understanding_models(settings: Settings) -> dict:
    """The model behind each understanding task (``ModelInfo``), without a client or loading anything: the
    assets' code versions. Empty when IMGPIPE_UNDERSTANDING=off."""
    if settings.understanding == "off":
        return {}
    if settings.understanding == "azure":
        from urllib.parse import urlparse

        from orchestration.adapters.azure.understanding import azure_models

        return azure_models(urlparse(settings.vision_endpoint).hostname or "",
                            urlparse(settings.content_safety_endpoint).hostname or "", settings.face_min_score)
    from orchestration.adapters.local.understanding import local_models

    return local_models(settings.face_min_score)


def understanding_unavailable(settings: Settings) -> str | None:
    """Why the local understanding cannot run here (a model package or its file missing), or None. Looks for
    the files only; their sha256 is checked when a run loads them."""
    if settings.understanding != "local":
        return None
    from assets.core.understand.models import MODEL_FILES, ModelMissing

    for model in MODEL_FILES.values():
        try:
            model.path()
        except ModelMissing as exc:
            return str(exc)
    return None


Builder = Callable[[Settings, "Clients"], Any]
PORTS = ("lake", "metadata", "queue", "signal", "results", "understanding")
ADAPTERS: dict[str, dict[str, Builder]] = {
    "local": {"lake": _local_lake, "metadata": _sqlite_metadata, "queue": _sqlite_queue,
              "signal": _file_signal, "results": _kafka_results, "understanding": _understanding},
    "emulated": {"lake": _azure_lake, "metadata": _cosmos_metadata, "queue": _sqlite_queue,
                 "signal": _storage_queue_signal, "results": _kafka_results, "understanding": _understanding},
    "azure": {"lake": _azure_lake, "metadata": _cosmos_metadata, "queue": _servicebus_queue,
              "signal": _storage_queue_signal, "results": _kafka_results, "understanding": _understanding},
}


def build(port: str, settings: Settings, clients: "Clients | None" = None) -> Any:
    """A new adapter for ``port`` in the settings' profile (not shared: the caller closes it)."""
    return ADAPTERS[settings.profile][port](settings, clients or CLIENTS)


def build_results(settings: Settings) -> ResultStream:
    """A producer of its own (the local stack's broker refill; a new one after a broker restart)."""
    return build("results", settings)


def build_reader(settings: Settings):
    """A reader of the whole results topic (CLI, tests, benchmarks); the caller closes it."""
    from orchestration.adapters.kafka.readers import ResultReader

    return ResultReader(kafka_bootstrap(settings), settings.kafka_topic, options=kafka_options(settings))


def build_user_follower(settings: Settings, user_id: str, **kwargs):
    """The web page's follower of one user's events (one per browser session; the caller closes it)."""
    from orchestration.adapters.kafka.readers import UserEventFollower

    return UserEventFollower(kafka_bootstrap(settings), settings.kafka_topic, user_id,
                             options=kafka_options(settings), **kwargs)


# -- the per-process registry ------------------------------------------------------------------------

class Clients:
    """One client per (port, settings) per process; thread-safe; closed once by ``close_all``."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._clients: dict[tuple[str, Settings], Any] = {}
        self._pid = os.getpid()
        self.created: dict[str, int] = {}  # how many adapters each port has built in this process

    def _get(self, port: str, settings: Settings, build: Callable[[], Any]) -> Any:
        with self._lock:
            if os.getpid() != self._pid:  # forked: the parent's connections are not ours
                self._clients, self.created, self._pid = {}, {}, os.getpid()
            key = (port, settings)
            client = self._clients.get(key)
            if client is None:
                client = build()
                self._clients[key] = client
                self.created[port] = self.created.get(port, 0) + 1
            return client

    def get(self, port: str, settings: Settings) -> Any:
        return self._get(port, settings, lambda: build(port, settings, self))

    def lake(self, settings: Settings) -> Lake:
        return self.get("lake", settings)

    def metadata(self, settings: Settings) -> MetadataStore:
        return self.get("metadata", settings)

    def signal(self, settings: Settings) -> Signal:
        return self.get("signal", settings)

    def queue(self, settings: Settings) -> BatchQueue:
        return self.get("queue", settings)

    def results(self, settings: Settings) -> ResultStream:
        return self.get("results", settings)

    def kafka_token(self, settings: Settings):
        """Event Hubs' OAUTHBEARER token provider (IMGPIPE_KAFKA_SECURITY=eventhubs): one credential and one
        cached token for every Kafka client of the process (producer, readers, the web app's followers);
        closed by ``close_all`` after the clients built on it."""
        return self._get("kafka_token", settings, lambda: _kafka_token_provider(settings))

    def understanding(self, settings: Settings):
        """The ImageUnderstanding adapter, or None when IMGPIPE_UNDERSTANDING=off."""
        return self.get("understanding", settings)

    def services(self, settings: Settings) -> Services:
        check_profile(settings)
        return Services(settings, self.lake(settings), self.metadata(settings), self.queue(settings))

    def close_all(self) -> None:
        with self._lock:
            if os.getpid() != self._pid:
                return
            clients, self._clients = list(self._clients.items()), {}
        for (port, _), client in reversed(clients):
            close = getattr(client, "close", None)
            if close is None:
                continue
            try:
                close()
            except Exception as exc:  # closing is best effort; never mask the real outcome
                log.warning("closing the %s client failed: %s", port, exc)


CLIENTS = Clients()
atexit.register(CLIENTS.close_all)


def services(settings: Settings) -> Services:
    """The ports intake, status and the web app use, shared in this process."""
    return CLIENTS.services(settings)
