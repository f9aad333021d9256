"""The Event Grid signal against Azurite's queue service, fed with events in the shapes Microsoft documents
for Service Bus → Event Grid → Storage queue (Event Grid schema and CloudEvents 1.0, plain and Base64)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from azure.storage.queue import QueueClient

from orchestration.adapters.azure.eventgrid import StorageQueueSignal, parse_event, service_bus_event

# As documented for Microsoft.ServiceBus.ActiveMessagesAvailableWithNoListeners (Event Grid schema).
DOCUMENTED_EVENT_GRID = {
    "topic": "/subscriptions/id/resourcegroups/Info/providers/Microsoft.ServiceBus/namespaces/contosovich",
    "subject": "queues/batches",
    "eventType": "Microsoft.ServiceBus.ActiveMessagesAvailableWithNoListeners",
    "eventTime": "2018-02-14T05:12:53.4133526Z",
    "id": "dede87b0-3656-419c-acaf-70c95ddc60f5",
    "data": {
        "namespaceName": "contosovich.servicebus.windows.net",
        "requestUri": "https://contosovich.servicebus.windows.net/batches/messages/head",
        "entityType": "queue",
        "queueName": "batches",
        "topicName": None,
        "subscriptionName": None,
    },
    "dataVersion": "1",
    "metadataVersion": "1",
}
DOCUMENTED_CLOUD_EVENT = {
    "source": "/subscriptions/id/resourcegroups/Info/providers/Microsoft.ServiceBus/namespaces/contosovich",
    "subject": "queues/batches",
    "type": "Microsoft.ServiceBus.DeadletterMessagesAvailablePeriodicNotifications",
    "time": "2018-02-14T05:12:53.4133526Z",
    "id": "dede87b0-3656-419c-acaf-70c95ddc60f5",
    "data": DOCUMENTED_EVENT_GRID["data"],
    "specversion": "1.0",
}


@pytest.fixture
def queue(azurite_connection_string):
    client = QueueClient.from_connection_string(azurite_connection_string, f"eg-{uuid.uuid4().hex[:12]}")
    signal = StorageQueueSignal(client, "batches")
    return client, signal


def test_parses_both_schemas_and_encodings():
    for event in (DOCUMENTED_EVENT_GRID, DOCUMENTED_CLOUD_EVENT):
        text = json.dumps(event)
        for body in (text, base64.b64encode(text.encode()).decode(), json.dumps([event])):
            event_type, data = parse_event(body)
            assert event_type.startswith("Microsoft.ServiceBus.") and data["queueName"] == "batches"
    assert parse_event("not json, not base64 !!") is None
    assert parse_event(json.dumps({"hello": "world"})) is None


def test_drain_counts_relevant_events_and_empties_the_queue(queue, caplog):
    client, signal = queue
    client.send_message(json.dumps(DOCUMENTED_EVENT_GRID))
    client.send_message(base64.b64encode(json.dumps(DOCUMENTED_CLOUD_EVENT).encode()).decode())
    other_entity = json.loads(json.dumps(DOCUMENTED_EVENT_GRID))
    other_entity["data"]["queueName"] = "someone-elses-queue"
    client.send_message(json.dumps(other_entity))
    unknown = {**DOCUMENTED_EVENT_GRID, "eventType": "Microsoft.Storage.BlobCreated"}
    client.send_message(json.dumps(unknown))
    client.send_message("garbage")
    with caplog.at_level("INFO"):
        assert signal.drain() == 2
    assert "Microsoft.Storage.BlobCreated" in caplog.text and "someone-elses-queue" in caplog.text
    assert signal.drain() == 0
    assert client.get_queue_properties().approximate_message_count == 0


def test_burst_collapses_into_one_drain(queue):
    client, signal = queue
    for _ in range(40):
        client.send_message(json.dumps(service_bus_event("batches", cloud_event=True)))
    assert signal.drain() == 40
    assert signal.drain() == 0
