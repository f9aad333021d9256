"""Fan-out of a very large batch (issue 25, item 3), end to end on a real local instance: the job
process_batch_fanout with the multiprocess executor (each step a process, as each is a pod on AKS), a small
threshold (IMGPIPE_FANOUT_MIN_IMAGES=5) and chunks of 3 images, so the sample batch of 7 runs as 3 chunks.

Run processes build the job from the environment (tests/support/fanout_job.py, reconstructable), as a run
worker does."""

from __future__ import annotations

import pytest
from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterEventType,
    ReexecutionOptions,
    execute_job,
    instance_for_test,
    materialize,
    reconstructable,
)

from assets.batch import batch_asset_checks, batch_assets
from orchestration import wiring
from orchestration.devtools.sample import make_sample_batch
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings
from orchestration.settings import load_settings
from tests.support.fanout_job import FAIL_ALWAYS, FAIL_ONCE, MARKS, fanout_job

def _starts(instance, run_id) -> dict[str, int]:
    """Step key → attempts in the run (its start, then a restart per retry)."""
    starts: dict[str, int] = {}
    of_type = {DagsterEventType.STEP_START, DagsterEventType.STEP_RESTARTED}
    for record in instance.get_records_for_run(run_id, of_type=of_type, limit=1000).records:
        key = record.event_log_entry.step_key
        starts[key] = starts.get(key, 0) + 1
    return starts


def _made(services, batch) -> dict:
    """Each image's outcome and renditions (name, format, size, sha256 of the bytes in the lake)."""
    made = {}
    for doc in services.metadata.query("images", partition_key=batch):
        made[doc["image_id"]] = (doc["outcome"], doc["code"], sorted(
            (r["name"], r["format"], r["width"], r["height"], r["sha256"]) for r in doc["renditions"]))
        for r in doc["renditions"]:
            assert services.lake.exists(r["path"])
    return made


@pytest.fixture
def fanout_env(settings, tmp_path, monkeypatch):
    """The settings as a run process reads them, with the fan-out threshold and chunk size small."""
    small = load_settings(**{**settings.model_dump(), "fanout_min_images": 5, "fanout_chunk_images": 3,
                             "workers": 1})
    for name, value in small.to_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(MARKS, str(tmp_path))
    return small


def test_a_large_batch_fans_out_in_chunks_retries_a_chunk_alone_and_reexecutes_only_the_failed_one(
        fanout_env, tmp_path, monkeypatch):
    services = wiring.services(fanout_env)
    files = make_sample_batch(tmp_path / "in")  # 7 files: 5 photos, a truncated one, a non-image
    upload = lambda user: upload_batch(services, [IntakeItem.from_path(p) for p in files], user_id=user).batch_id  # noqa: E731
    reference, batch = upload("alice"), upload("bob")

    (tmp_path / "dagster").mkdir()
    with instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        instance.add_dynamic_partitions(batches_partitions.name, [reference, batch])
        # The single-process path: process_batch's in-process executor, the default threshold (one chunk).
        one = materialize([*batch_assets, *batch_asset_checks], partition_key=reference, instance=instance,
                          resources=resources_from_settings(load_settings(**{**fanout_env.model_dump(),
                                                                             "fanout_min_images": 1000})))
        assert one.success
        [mat] = [m for m in one.asset_materializations_for_node("renditions")]
        assert mat.metadata["chunks"].value == 1

        # Fanned out: chunk c0001 (i0004..i0006) fails once and is retried alone; chunk c0000 (i0001..i0003)
        # keeps failing, so the run fails after its retries.
        monkeypatch.setenv(FAIL_ONCE, "i0004")
        monkeypatch.setenv(FAIL_ALWAYS, "i0002")
        with execute_job(reconstructable(fanout_job), instance=instance, tags={"dagster/partition": batch},
                         raise_on_error=False) as first:
            assert not first.success
            run_id = first.run_id
        starts = _starts(instance, run_id)
        assert {k: v for k, v in starts.items() if "render_chunk" in k} == {
            "renditions.render_chunk[c0000]": 3,  # (RetryPolicy: 2 retries)
            "renditions.render_chunk[c0001]": 2, "renditions.render_chunk[c0002]": 1}
        assert "renditions.merge_chunks" not in starts and starts["renditions.plan_chunks"] == 1

        # Re-executed from failure with the lake healthy: only the failed chunk and what follows it run.
        monkeypatch.delenv(FAIL_ALWAYS)
        with execute_job(reconstructable(fanout_job), instance=instance, tags={"dagster/partition": batch},
                         reexecution_options=ReexecutionOptions.from_failure(run_id, instance)) as again:
            assert again.success
            rerun = _starts(instance, again.run_id)
        assert [k for k in rerun if k.startswith("renditions.")] == [
            "renditions.render_chunk[c0000]", "renditions.merge_chunks"]
        assert "raw_images" not in rerun and "image_documents" in rerun

        # Lineage: the renditions of the batch's partition, materialized by the re-execution, from 3 chunks.
        [record] = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("renditions"), asset_partitions=[batch]), limit=10).records
        assert record.run_id == again.run_id
        metadata = record.asset_materialization.metadata
        assert (metadata["chunks"].value, metadata["processed"].value, metadata["rejected"].value) == (3, 5, 2)
        assert instance.get_run_by_id(again.run_id).tags["dagster/partition"] == batch

    # The same renditions (bytes) and outcomes as the single-process path; chunk hand-overs removed.
    assert _made(services, batch) == _made(services, reference)
    assert services.metadata.read("batches", batch, "bob")["status"] == "completed"
    assert not [p for p in services.lake.list(f"processed/{batch}/") if "/_steps/" in p]
