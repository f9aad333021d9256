"""Builds the adapters behind each port from Settings — the one place that picks an implementation.

| port          | local           | emulated                         | azure                          |
|---------------|-----------------|----------------------------------|--------------------------------|
| Lake          | LocalLake       | AzureLake on Azurite (Blob API)  | AzureLake on ADLS Gen2         |
| MetadataStore | SQLite          | Cosmos adapter on cosmosdb-server| Cosmos DB                      |
| BatchQueue    | SQLite          | SQLite (no Service Bus server)   | Service Bus                    |
| Signal        | files           | Storage queue on Azurite         | Event Grid → Storage queue     |
| ResultStream  | Kafka (Tansu)   | Kafka (Tansu)                    | Kafka / Event Hubs             |

In 'emulated' the local queue posts an Event Grid-shaped event to the Storage queue on every send, as
Service Bus + Event Grid do in Azure, so the sensor reads the signal through the Azure adapter."""

from __future__ import annotations

from dataclasses import dataclass

from orchestration.adapters.kafka_results import KafkaResultStream, ResultReader, client_options
from orchestration.adapters.local_lake import LocalLake
from orchestration.adapters.local_metadata import SqliteMetadataStore
from orchestration.adapters.local_queue import SqliteBatchQueue
from orchestration.adapters.local_signal import FileSignal
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.ports.queue import BatchQueue
from orchestration.ports.results import ResultStream
from orchestration.ports.signal import Signal
from orchestration.settings import Settings, check_profile


def build_lake(settings: Settings) -> Lake:
    if settings.profile == "local":
        return LocalLake(settings.lake_dir, soft_delete_days=settings.lake_soft_delete_days)
    from orchestration.adapters.azure_lake import AzureLake

    return AzureLake.from_settings(
        container=settings.lake_container, connection_string=settings.storage_connection_string or None,
        account_url=settings.storage_account_url or None, hns=settings.adls_hns,
        soft_delete_days=settings.lake_soft_delete_days,
    )


def build_metadata(settings: Settings) -> MetadataStore:
    if settings.profile == "local":
        return SqliteMetadataStore(settings.metadata_db)
    from orchestration.adapters.azure_cosmos import CosmosMetadataStore

    if settings.cosmos_key:
        credential = settings.cosmos_key
    else:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    if not settings.cosmos_verify_tls:
        import urllib3

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    return CosmosMetadataStore(settings.cosmos_endpoint, credential, database=settings.cosmos_database,
                               connection_verify=settings.cosmos_verify_tls)


def build_signal(settings: Settings) -> Signal:
    if settings.profile == "local":
        return FileSignal(settings.signal_dir)
    from orchestration.adapters.eventgrid_signal import StorageQueueSignal

    if settings.storage_connection_string:
        return StorageQueueSignal.from_connection_string(
            settings.storage_connection_string, settings.signal_queue, settings.servicebus_queue)
    from azure.identity import DefaultAzureCredential
    from azure.storage.queue import QueueClient

    queue_url = settings.storage_account_url.replace(".blob.", ".queue.")
    return StorageQueueSignal(QueueClient(queue_url, settings.signal_queue, credential=DefaultAzureCredential()),
                              settings.servicebus_queue)


def build_queue(settings: Settings) -> BatchQueue:
    if settings.profile == "azure":
        from orchestration.adapters.servicebus_queue import ServiceBusQueue

        return ServiceBusQueue.from_settings(
            settings.servicebus_queue, connection_string=settings.servicebus_connection_string or None,
            fully_qualified_namespace=settings.servicebus_namespace or None)
    # Locally (and in 'emulated') the queue raises the signal itself, as Service Bus + Event Grid do.
    return SqliteBatchQueue(
        settings.queue_db,
        lock_duration_seconds=settings.queue_lock_seconds,
        max_delivery_count=settings.queue_max_delivery_count,
        duplicate_window_seconds=settings.queue_duplicate_window_seconds,
        on_send=build_signal(settings).notify,
    )


def kafka_options(settings: Settings) -> dict:
    return client_options(settings.kafka_security, eventhubs_connection_string=settings.eventhubs_connection_string,
                          username=settings.kafka_username, password=settings.kafka_password)


def build_results(settings: Settings) -> ResultStream:
    return KafkaResultStream(settings.kafka_bootstrap, settings.kafka_topic, options=kafka_options(settings))


def build_reader(settings: Settings) -> ResultReader:
    return ResultReader(settings.kafka_bootstrap, settings.kafka_topic, options=kafka_options(settings))


@dataclass
class Services:
    """The ports intake and `imgpipe status` need (Kafka is opened only by the run that publishes)."""

    settings: Settings
    lake: Lake
    metadata: MetadataStore
    queue: BatchQueue

    @classmethod
    def from_settings(cls, settings: Settings) -> "Services":
        check_profile(settings)
        return cls(settings, build_lake(settings), build_metadata(settings), build_queue(settings))
