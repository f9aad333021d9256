"""Delete, restore and purge of a batch; the lake's lifecycle rules — with an injected clock, on a batch the
real assets processed (local adapters; the lake's soft delete and the store's TTL are the ports' own)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize

from assets.batch import batch_asset_checks, batch_assets
from orchestration import wiring
from orchestration.adapters.local.lake import LocalLake
from orchestration.adapters.local.metadata import SqliteMetadataStore
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain import lifecycle, retention
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.domain.services import Services
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings
from ui_streamlit import data

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def timestamp(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def processed(settings):
    """A 3-image batch of 'ann', processed by the real assets; services whose lake and store run on a
    clock the test moves."""
    real = wiring.services(settings)
    photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(400, 300, i * 50, str(i)))) for i in range(3)]
    batch = upload_batch(real, photos, user_id="ann", metadata={"title": "Trip"}).batch_id
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(batches_partitions.name, [batch])
    assert materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                       resources=resources_from_settings(settings)).success
    # The run's step hand-overs (processed/<batch>/_steps/) went to the trash when it completed, on the real
    # clock; nothing else is in the trash yet. Emptied, so that the test's clock is the only one that counts.
    assert all("/_steps/" in d.path for d in real.lake.list_deleted(""))
    real.lake.purge_expired(now=datetime.now(timezone.utc) + timedelta(days=settings.lake_soft_delete_days + 1))
    clock = Clock(T0)
    services = Services(settings=settings,
                        lake=LocalLake(settings.lake_dir, soft_delete_days=settings.lake_soft_delete_days, clock=clock),
                        metadata=SqliteMetadataStore(settings.metadata_db, clock=clock.timestamp),
                        queue=real.queue)
    return services, batch, clock


def _lake_bytes(services, batch):
    return {p: hashlib.sha256(services.lake.read(p)).hexdigest()
            for prefix in (f"raw/{batch}/", f"processed/{batch}/") for p in services.lake.list(prefix)}


def test_a_deleted_batch_is_hidden_at_once_and_restored_byte_for_byte(processed):
    services, batch, clock = processed
    before = _lake_bytes(services, batch)
    docs_before = {d["id"]: d for d in services.metadata.query("images", partition_key=batch)}
    assert len(before) == 1 + 3 + 3 * 6 + 1  # manifest, originals, renditions, outcomes.json
    assert [b["id"] for b in data.user_batches(services, "ann")] == [batch]

    with pytest.raises(retention.RetentionError, match="no such batch"):  # someone else cannot
        retention.delete_batch(services, batch, "mallory", deleted_by="mallory", now=clock.now)
    retention.delete_batch(services, batch, "ann", deleted_by="ann", now=clock.now)
    assert data.user_batches(services, "ann") == [] and data.batch_for_user(services, "ann", batch) is None
    assert data.image_frame(services, "ann").empty
    assert not _lake_bytes(services, batch)  # nothing readable in the lake...
    assert len(services.lake.list_deleted(f"processed/{batch}/")) == 3 * 6 + 1  # ...but kept, soft-deleted
    assert all(d["deleted"] and d["ttl"] == 7 * 86400 for d in services.metadata.query("images", partition_key=batch))
    [listed] = retention.recently_deleted(services, "ann", now=clock.now)
    assert listed["batch_id"] == batch and listed["restorable_until"].startswith("2026-11-09")
    assert retention.recently_deleted(services, "mallory", now=clock.now) == []

    clock.now = T0 + timedelta(days=6, hours=23)  # inside the 7 days
    with pytest.raises(retention.RetentionError, match="no such batch"):
        retention.restore_batch(services, batch, "mallory", now=clock.now)
    retention.restore_batch(services, batch, "ann", now=clock.now)
    assert _lake_bytes(services, batch) == before  # byte for byte
    after = {d["id"]: d for d in services.metadata.query("images", partition_key=batch)}
    assert sorted(after) == sorted(docs_before) and not any("deleted" in d or "ttl" in d for d in after.values())
    assert data.batch_for_user(services, "ann", batch)["status"] == "completed"
    assert retention.recently_deleted(services, "ann", now=clock.now) == []
    # Restored documents no longer expire: long after the period they are still there.
    clock.now = T0 + timedelta(days=30)
    assert retention.purge(services.lake, services.metadata, now=clock.now)["documents"] == 0
    assert data.batch_for_user(services, "ann", batch) is not None


def test_after_the_restore_period_a_deleted_batch_is_purged_for_good(processed):
    services, batch, clock = processed
    retention.delete_batch(services, batch, None, deleted_by="operator", now=clock.now)  # an operator: any user's batch
    clock.now = T0 + timedelta(days=7, minutes=1)
    with pytest.raises(retention.RetentionError, match="no such batch"):  # its documents expired with the period
        retention.restore_batch(services, batch, "ann", now=clock.now)
    assert retention.recently_deleted(services, None, now=clock.now) == []
    # The documents' TTL ran out: invisible at once, removed by the purge (Cosmos DB removes them itself).
    assert services.metadata.read("batches", batch, "ann") is None
    assert list(services.metadata.query("images", partition_key=batch)) == []
    purged = retention.purge(services.lake, services.metadata, now=clock.now)
    assert purged == {"lake_objects": 1 + 3 + 3 * 6 + 1, "documents": 1 + 3}
    assert services.lake.list_deleted("") == [] and not any((services.settings.lake_dir / ".deleted").iterdir())


def test_the_cli_deletes_lists_and_restores(processed, monkeypatch):
    services, batch, _ = processed
    env = {**os.environ, **services.settings.to_env()}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    notbobs = cli("delete", batch, "--user", "bob")  # not bob's: for bob it does not exist
    assert notbobs.returncode == 4 and f"no such batch: {batch}" in notbobs.stderr
    out = cli("delete", batch, "--user", "ann")
    assert out.returncode == 0 and "restorable until" in out.stdout
    listed = json.loads(cli("deleted", "--json").stdout)
    assert [d["batch_id"] for d in listed] == [batch]
    again = cli("restore", batch)  # an operator
    assert again.returncode == 0 and "restored" in again.stdout
    wrong = cli("restore", batch)
    assert wrong.returncode == 2 and "not deleted" in wrong.stderr and "Traceback" not in wrong.stderr


# -- lifecycle ------------------------------------------------------------------------------------


def test_lifecycle_rules_expire_raw_uploads_and_keep_renditions(processed):
    services, batch, _ = processed
    rules = lifecycle.load_rules()
    raw_days = next(r.delete_after_days for r in rules if r.prefix == "raw/")
    services.lake.write("analytics/image_facts/day=2026-11-01/part-0.parquet", b"x")
    written = datetime.now(timezone.utc)
    assert lifecycle.due(services.lake, written + timedelta(days=raw_days - 1)) == []
    counts = lifecycle.apply(services.lake, written + timedelta(days=raw_days + 1))
    assert counts["raw-uploads"] == 1 + 3 and counts["bi-exports"] == 0
    assert list(services.lake.list(f"raw/{batch}/")) == []
    assert len(list(services.lake.list(f"processed/{batch}/"))) == 3 * 6 + 1  # renditions are kept
    assert len(services.lake.list_deleted(f"raw/{batch}/")) == 4  # soft: restorable for the retention period
    assert lifecycle.apply(services.lake, written + timedelta(days=401))["bi-exports"] == 1


def test_the_housekeeping_job_applies_the_rules_and_purges(settings):
    from sensors.housekeeping import housekeeping_job

    lake = wiring.services(settings).lake
    lake.write("raw/b-old/x", b"1")
    old = datetime.now(timezone.utc) - timedelta(days=40)
    os.utime(settings.lake_dir / "raw/b-old/x", (old.timestamp(), old.timestamp()))
    result = housekeeping_job.execute_in_process(resources=resources_from_settings(settings))
    assert result.success
    assert result.output_for_node("housekeeping")["lifecycle"]["raw-uploads"] == 1
    assert not lake.exists("raw/b-old/x")


def test_the_azure_management_policy_comes_from_the_same_rules_and_fits_the_arm_schema():
    policy = lifecycle.azure_management_policy("lake")
    assert [(r["name"], r["definition"]["filters"]["prefixMatch"][0],
             r["definition"]["actions"]["baseBlob"]["delete"]["daysAfterModificationGreaterThan"])
            for r in policy["rules"]] == [(r.name, f"lake/{r.prefix}", r.delete_after_days)
                                          for r in lifecycle.load_rules()]
    import armschema

    if not armschema.available():
        pytest.skip(f"Azure's ARM schemas are not at {armschema.SCHEMAS}")

    def resource(p):
        return {"type": "Microsoft.Storage/storageAccounts/managementPolicies", "apiVersion": "2025-06-01",
                "name": "imgpipelake/default", "properties": {"policy": p}}

    assert armschema.resource_errors(resource(policy)) == []
    bad = json.loads(json.dumps(policy))
    bad["rules"][0]["definition"]["actions"]["baseBlob"]["delete"]["daysAfterModificationGreaterThan"] = "thirty"
    del bad["rules"][1]["definition"]["filters"]["blobTypes"]
    errors = armschema.resource_errors(resource(bad))
    assert any("daysAfterModificationGreaterThan" in e for e in errors) and any("blobTypes" in e for e in errors)


def test_a_broken_rules_file_is_refused():
    with pytest.raises(ValueError, match="whole number"):
        lifecycle.load_rules('{"rules": [{"name": "a", "prefix": "raw/", "delete_after_days": 0}]}')
    with pytest.raises(ValueError, match="folder"):
        lifecycle.load_rules('{"rules": [{"name": "a", "prefix": "raw", "delete_after_days": 3}]}')
