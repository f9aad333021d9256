"""A ResultStream whose broker is down: every publish fails at once with the error KafkaResultStream raises
after its 10 s bootstrap timeout (the contract suite checks that one against a port nothing listens on). Tests
of how a run fails, retries and is re-executed use this instead of waiting 10 s per step."""

from __future__ import annotations

from orchestration.adapters.kafka.connection import ResultStreamError


class BrokerDown:
    def publish(self, key, event) -> None:
        raise ResultStreamError("Kafka broker at 127.0.0.1:1 is not reachable: NoBrokersAvailable")

    def flush(self, timeout_seconds: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass
