"""A ResultStream whose broker is down: every publish fails at once with the error KafkaResultStream raises
after its 10 s bootstrap timeout (the contract suite checks that one against a port nothing listens on). Tests
of how a run fails, retries and is re-executed use this instead of waiting 10 s per step."""

from __future__ import annotations

from orchestration.adapters.kafka.connection import ResultStreamError


class Recorder:
    """A ResultStream that records what was published (a broker that acknowledges everything)."""

    def __init__(self):
        self.events: list[dict] = []

    def publish(self, key, event):
        self.events.append(dict(event))

    def flush(self, timeout_seconds=30.0):
        pass

    def close(self):
        pass


class BrokerDown:
    def publish(self, key, event) -> None:
        raise ResultStreamError("Kafka broker at 127.0.0.1:1 is not reachable: NoBrokersAvailable")

    def flush(self, timeout_seconds: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass


class LakeFailingOn:
    """The real lake, except that writing a path ending in ``suffix`` fails (a storage outage mid-run): how
    tests make a run fail in its renditions step, now that a broker outage no longer fails a run."""

    def __init__(self, lake, suffix: str = "outcomes.json"):
        self._lake, self._suffix = lake, suffix

    def write(self, path, data, **kwargs):
        if path.endswith(self._suffix):
            raise OSError(f"storage unavailable writing {path}")
        return self._lake.write(path, data, **kwargs)

    def __getattr__(self, name):
        return getattr(self._lake, name)
