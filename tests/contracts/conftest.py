"""Adapter factories for the shared contract suites.

Each port's suite runs once per adapter listed here. The Azure adapters join by adding a parameter
(skipped with a stated reason when their server or connection string is not available)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from orchestration.adapters.local_lake import LocalLake
from orchestration.adapters.local_metadata import SqliteMetadataStore
from orchestration.adapters.local_queue import SqliteBatchQueue
from orchestration.adapters.local_signal import FileSignal


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


@pytest.fixture(params=["local"])
def lake(request, tmp_path, clock):
    if request.param == "local":
        return LocalLake(tmp_path / "lake", soft_delete_days=7, clock=clock)
    raise NotImplementedError(request.param)


@pytest.fixture(params=["local"])
def metadata_store(request, tmp_path):
    if request.param == "local":
        return SqliteMetadataStore(tmp_path / "meta.sqlite")
    raise NotImplementedError(request.param)


@pytest.fixture(params=["local"])
def make_queue(request, tmp_path, clock):
    """A factory: ``make_queue(lock_duration_seconds=..., max_delivery_count=..., on_send=...)``."""

    def factory(**kwargs):
        if request.param == "local":
            return SqliteBatchQueue(tmp_path / "queue.sqlite", clock=clock.timestamp, **kwargs)
        raise NotImplementedError(request.param)

    return factory


@pytest.fixture(params=["local"])
def signal(request, tmp_path):
    if request.param == "local":
        return FileSignal(tmp_path / "signals")
    raise NotImplementedError(request.param)
