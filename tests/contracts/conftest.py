"""Adapter factories for the shared contract suites.

Each port's suite runs once per adapter listed here. The Azure adapters join by adding a parameter
(skipped with a stated reason when their server or connection string is not available)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from orchestration.adapters.local.lake import LocalLake
from orchestration.adapters.local.metadata import SqliteMetadataStore
from orchestration.adapters.local.queue import SqliteBatchQueue
from orchestration.adapters.local.signal import FileSignal


class FakeClock:
    """A controllable clock: the contract tests move time forward instead of sleeping."""

    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def timestamp(self) -> float:
        return self.now.timestamp()

    def advance(self, **kwargs) -> None:
        self.now += timedelta(**kwargs)


@pytest.fixture
def clock():
    return FakeClock()


AZURITE_NO_SOFT_DELETE = (
    "Azurite does not implement blob soft delete or undelete ('Current API is not implemented yet'); "
    "set IMGPIPE_TEST_ADLS_CONNECTION_STRING to run this against a real ADLS Gen2 account"
)
# Lake contract tests that need the service's soft-delete feature or a controllable clock.
SOFT_DELETE_TESTS = {
    "test_soft_delete_hides_then_restore_brings_back",
    "test_restore_picks_newest_deletion_or_the_named_one",
    "test_restore_refuses_to_overwrite_a_live_object",
    "test_retention_expiry_and_purge",
}


@pytest.fixture(params=["local", "azurite", "adls-live"])
def lake(request, tmp_path, clock):
    name = request.node.originalname
    if request.param == "local":
        return LocalLake(tmp_path / "lake", soft_delete_days=7, clock=clock)
    import uuid

    from orchestration.adapters.azure.lake import AzureLake

    container = f"t{uuid.uuid4().hex[:16]}"
    if request.param == "azurite":
        if name in SOFT_DELETE_TESTS:
            pytest.skip(AZURITE_NO_SOFT_DELETE)
        return AzureLake.from_settings(container=container,
                                       connection_string=request.getfixturevalue("azurite_connection_string"))
    if request.param == "adls-live":
        conn = os.environ.get("IMGPIPE_TEST_ADLS_CONNECTION_STRING")
        if not conn:
            pytest.skip("no live ADLS Gen2 account: set IMGPIPE_TEST_ADLS_CONNECTION_STRING (an account with "
                        "hierarchical namespace and soft delete enabled) to run the Azure lake against it")
        if name == "test_retention_expiry_and_purge":
            pytest.skip("retention is enforced by the service over days; not testable in a test run")
        return AzureLake.from_settings(container=container, connection_string=conn, hns=True)
    raise NotImplementedError(request.param)


# Known gaps of the local test servers, as (backend, test name) -> reason. Those tests are marked
# xfail(strict=True) for that backend: product code does not paper over a server bug, and if the
# server gets fixed the strict xfail fails and tells us to drop the entry.
SERVER_GAPS = {
    ("cosmosdb-server", "test_a_document_with_a_ttl_expires_after_its_last_write"):
        "cosmosdb-server does not implement time to live (items with an expired ttl are still returned); "
        "Cosmos DB deletes them (documented per-item TTL with the container's default TTL -1)",
}


@pytest.fixture(params=["local", "cosmosdb-server"])
def metadata_store(request, tmp_path):
    gap = SERVER_GAPS.get((request.param, request.node.originalname))
    if gap:
        request.applymarker(pytest.mark.xfail(reason=gap, strict=True))
    if request.param == "local":
        return SqliteMetadataStore(tmp_path / "meta.sqlite")
    if request.param == "cosmosdb-server":
        import uuid

        import urllib3

        from orchestration.adapters.azure.cosmos import CosmosMetadataStore
        from orchestration.devtools.emulators import COSMOS_DEV_KEY

        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # self-signed test server
        endpoint = request.getfixturevalue("cosmos_endpoint")
        return CosmosMetadataStore(endpoint, COSMOS_DEV_KEY, database=f"t{uuid.uuid4().hex[:12]}",
                                   connection_verify=False)
    raise NotImplementedError(request.param)


# Queue contract tests that move a fake clock (lock expiry, duplicate window, max deliveries by lock
# expiry) or configure the queue per test; a live namespace has real time and queue properties set by
# the infrastructure code.
CLOCK_TESTS = {
    "test_duplicate_message_id_dropped_inside_window_only",
    "test_peek_lock_hides_message_until_lock_expires",
    "test_settling_after_lock_expiry_raises_lock_lost",
    "test_renew_lock_extends",
    "test_max_delivery_count_dead_letters_automatically",
    "test_on_send_hook_fires_for_accepted_messages_only",
    "test_queue_send_raises_the_signal",
    "test_another_client_cannot_settle_but_the_message_is_not_lost",
}


# Contract tests the Service Bus adapter cannot pass by design, whoever serves it: Service Bus drops a
# duplicate send silently (the adapter cannot report False), and the on-send hook is the local queue's
# stand-in for Event Grid.
SERVICEBUS_NOT_APPLICABLE = {
    "test_duplicate_message_id_dropped_inside_window_only",
    "test_on_send_hook_fires_for_accepted_messages_only",
    "test_queue_send_raises_the_signal",
}


@pytest.fixture(params=["local", "servicebus-sdk-double", "servicebus-live"])
def make_queue(request, tmp_path, clock, monkeypatch):
    """A factory: ``make_queue(lock_duration_seconds=..., max_delivery_count=..., on_send=...)``.

    Each call returns a new client of the same queue (a new process, as far as the queue can tell)."""
    if request.param.startswith("servicebus") and request.node.originalname in SERVICEBUS_NOT_APPLICABLE:
        pytest.skip("Service Bus drops duplicates silently and has no on-send hook (Event Grid signals instead)")
    namespace = None
    if request.param == "servicebus-sdk-double":
        from tests.servicebus_double import FakeNamespace, install

        namespace = FakeNamespace(clock)
        install(monkeypatch, namespace)
    if request.param == "servicebus-live":
        conn, queue = os.environ.get("SERVICEBUS_CONNECTION_STRING"), os.environ.get("SERVICEBUS_QUEUE", "imgpipe-contract")
        if not conn:
            pytest.skip("no Service Bus namespace: set SERVICEBUS_CONNECTION_STRING (and SERVICEBUS_QUEUE, an "
                        "empty queue with duplicate detection) to run the contract suite against Service Bus")
        if request.node.originalname in CLOCK_TESTS:
            pytest.skip("needs a controllable clock or per-test queue settings; covered by the SDK-boundary tests")

    def factory(**kwargs):
        if request.param == "local":
            return SqliteBatchQueue(tmp_path / "queue.sqlite", clock=clock.timestamp, **kwargs)
        if request.param == "servicebus-sdk-double":
            from datetime import timedelta

            from orchestration.adapters.azure.servicebus import ServiceBusQueue

            namespace.queue("batches", lock_duration=timedelta(seconds=kwargs.get("lock_duration_seconds", 60)),
                            max_delivery_count=kwargs.get("max_delivery_count", 10),
                            duplicate_window=timedelta(seconds=kwargs.get("duplicate_window_seconds", 600)))
            return ServiceBusQueue.from_settings("batches", connection_string="Endpoint=sb://double.invalid/;"
                                                 "SharedAccessKeyName=k;SharedAccessKey=not-a-secret")
        if request.param == "servicebus-live":
            from orchestration.adapters.azure.servicebus import ServiceBusQueue

            return ServiceBusQueue.from_settings(queue, connection_string=conn)
        raise NotImplementedError(request.param)

    return factory


@pytest.fixture(params=["local", "azurite-queue"])
def signal(request, tmp_path):
    if request.param == "local":
        return FileSignal(tmp_path / "signals")
    if request.param == "azurite-queue":
        import uuid

        from orchestration.adapters.azure.eventgrid import StorageQueueSignal

        conn = request.getfixturevalue("azurite_connection_string")
        return StorageQueueSignal.from_connection_string(conn, f"signal-{uuid.uuid4().hex[:12]}", "batches")
    raise NotImplementedError(request.param)
