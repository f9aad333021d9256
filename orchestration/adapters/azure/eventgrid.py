"""Event Grid adapter of the Signal port: Service Bus events delivered by Event Grid to an Azure Storage
queue, which the sensor drains cheaply. Azure is touched here.

Service Bus Premium raises these to Event Grid (Microsoft.ServiceBus.*):
- ActiveMessagesAvailableWithNoListeners / DeadletterMessagesAvailableWithNoListeners — messages are
  waiting and nobody is receiving;
- ActiveMessagesAvailablePeriodicNotifications / DeadletterMessagesAvailablePeriodicNotifications —
  the same, repeated periodically.
The Event Grid subscription delivers each event as one Storage-queue message, in the Event Grid schema
or as a CloudEvent 1.0 depending on the subscription; the message text may be Base64-encoded. Both
schemas and both encodings are parsed with the azure-eventgrid / azure-core models. Events about other
queues of the namespace and unknown event types are dropped with a log line. ``drain`` deletes every
message it read and returns how many relevant events there were: a burst of events is one drain.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from datetime import datetime, timezone

from azure.core.exceptions import ResourceExistsError
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridEvent
from azure.storage.queue import QueueClient

log = logging.getLogger(__name__)

ACTIVE_NO_LISTENERS = "Microsoft.ServiceBus.ActiveMessagesAvailableWithNoListeners"
RELEVANT_EVENTS = frozenset(
    {
        ACTIVE_NO_LISTENERS,
        "Microsoft.ServiceBus.DeadletterMessagesAvailableWithNoListeners",
        "Microsoft.ServiceBus.ActiveMessagesAvailablePeriodicNotifications",
        "Microsoft.ServiceBus.DeadletterMessagesAvailablePeriodicNotifications",
    }
)


def parse_event(text: str) -> tuple[str, dict] | None:
    """(event type, data) of one queue message, or None when it is not an event we can read."""
    try:
        raw = json.loads(text)
    except ValueError:
        try:
            raw = json.loads(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error):
            return None
    if isinstance(raw, list) and len(raw) == 1:  # a single event sent as a batch
        raw = raw[0]
    if not isinstance(raw, dict):
        return None
    try:
        if "specversion" in raw:
            event = CloudEvent.from_dict(raw)
            return event.type, event.data if isinstance(event.data, dict) else {}
        if "eventType" in raw:
            event = EventGridEvent.from_dict(raw)
            return event.event_type, event.data if isinstance(event.data, dict) else {}
    except (KeyError, TypeError, ValueError):
        return None
    return None


def service_bus_event(queue_name: str, namespace: str = "local", *, cloud_event: bool = False) -> dict:
    """An event shaped as Service Bus + Event Grid deliver it (used where the local queue stands in for
    Service Bus, and by the tests)."""
    data = {
        "namespaceName": f"{namespace}.servicebus.windows.net",
        "requestUri": f"https://{namespace}.servicebus.windows.net/{queue_name}/messages/head",
        "entityType": "queue",
        "queueName": queue_name,
        "topicName": None,
        "subscriptionName": None,
    }
    source = f"/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/imgpipe/providers/Microsoft.ServiceBus/namespaces/{namespace}"
    now = datetime.now(timezone.utc).isoformat()
    if cloud_event:
        return {"specversion": "1.0", "type": ACTIVE_NO_LISTENERS, "source": source, "id": str(uuid.uuid4()),
                "time": now, "subject": f"queues/{queue_name}", "data": data}
    return {"topic": source, "subject": f"queues/{queue_name}", "eventType": ACTIVE_NO_LISTENERS, "eventTime": now,
            "id": str(uuid.uuid4()), "data": data, "dataVersion": "1", "metadataVersion": "1"}


class StorageQueueSignal:
    def __init__(self, queue: QueueClient, entity_name: str, *, max_messages: int = 256):
        self._queue = queue
        self.entity_name = entity_name
        self.max_messages = max_messages
        try:
            self._queue.create_queue()
        except ResourceExistsError:
            pass

    @classmethod
    def from_connection_string(cls, connection_string: str, queue_name: str, entity_name: str) -> "StorageQueueSignal":
        return cls(QueueClient.from_connection_string(connection_string, queue_name), entity_name)

    def notify(self) -> None:
        """Post an event as Event Grid would (only where a stand-in queue raises its own signal)."""
        self._queue.send_message(json.dumps(service_bus_event(self.entity_name)))

    def drain(self) -> int:
        relevant = seen = 0
        for message in self._queue.receive_messages(messages_per_page=32, visibility_timeout=30):
            seen += 1
            parsed = parse_event(message.content)
            if parsed is None:
                log.warning("dropping an unreadable signal message (id %s)", message.id)
            else:
                event_type, data = parsed
                entity = data.get("queueName") or data.get("topicName")
                if event_type not in RELEVANT_EVENTS:
                    log.info("ignoring event type %s", event_type)
                elif entity and entity != self.entity_name:
                    log.info("ignoring %s for another entity (%s)", event_type, entity)
                else:
                    relevant += 1
            self._queue.delete_message(message)
            if seen >= self.max_messages:
                break
        return relevant
