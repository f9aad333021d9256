"""Per-user quotas under concurrent uploads, on both metadata adapters (SQLite and cosmosdb-server): the
check and the reservation are one conditional write, so racing uploads cannot pass a limit together."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from orchestration.adapters.local.lake import LocalLake
from orchestration.adapters.local.queue import SqliteBatchQueue
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain.intake import IntakeItem, QuotaExceeded, upload_batch
from orchestration.domain.services import Services
from orchestration.settings import load_settings

pytestmark = pytest.mark.contract

PHOTO = jpeg_bytes(synthetic_photo(640, 480, 7, "q"))


def _services(tmp_path: Path, store, **limits) -> Services:
    settings = load_settings(data_dir=tmp_path / "data", **limits)
    return Services(settings=settings, lake=LocalLake(tmp_path / "lake"), metadata=store,
                    queue=SqliteBatchQueue(tmp_path / "queue.sqlite"))


def _race(services: Services, n: int, user: str = "racer") -> tuple[list[str], list[str]]:
    accepted, refused = [], []
    go = threading.Barrier(n)

    def one(i: int) -> None:
        go.wait()
        try:
            accepted.append(upload_batch(services, [IntakeItem.from_bytes(f"{i}.jpg", PHOTO)], user_id=user).batch_id)
        except QuotaExceeded as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return accepted, refused


def test_concurrent_uploads_cannot_pass_the_daily_bytes_together(tmp_path, metadata_store):
    services = _services(tmp_path, metadata_store, max_bytes_per_day=int(len(PHOTO) * 2.5))
    accepted, refused = _race(services, 8)
    assert len(accepted) == 2 and len(refused) == 6, (accepted, refused)
    assert all("IMGPIPE_MAX_BYTES_PER_DAY" in r for r in refused)


def test_concurrent_uploads_cannot_pass_the_batches_in_flight_together(tmp_path, metadata_store):
    services = _services(tmp_path, metadata_store, max_batches_in_flight=1)
    accepted, refused = _race(services, 8)
    assert len(accepted) == 1 and len(refused) == 7, (accepted, refused)
    # The slot frees when the batch ends (the reservation is released by looking, not by remembering).
    [batch] = accepted
    doc = metadata_store.read("batches", batch, "racer")
    metadata_store.upsert("batches", {**doc, "status": "completed"})
    assert len(_race(services, 3)[0]) == 1
