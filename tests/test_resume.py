"""Resumable renditions: a retried or re-executed run of a batch takes over the images an earlier attempt
finished under the same processing and processes only the rest. What may be taken over is decided by a pure
function (``processing.resumable``, tested directly); the runs go through Dagster with the real local
adapters, the real image worker pool and a real re-execution from failure.

How many images a run handed to the image workers is counted from the lake: the pool asks for an image's
raw bytes exactly when it gives the image to a worker, and nothing else in a batch run reads them."""

from __future__ import annotations

import pytest
from dagster import (
    Definitions, DagsterInstance, ReexecutionOptions, execute_job, instance_for_test, materialize, reconstructable,
)

from assets.batch import batch_asset_checks, batch_assets
from tests.support.results import Recorder
from orchestration import wiring
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain import processing as steps
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.domain.manifest import BatchManifest, ManifestImage
from orchestration.domain.understanding import record_review
from orchestration.partitions import REPROCESS_TAG, batches_partitions
from orchestration.resources import resources_from_settings
from orchestration.settings import load_settings

# -- which outcomes a run takes over (pure) -------------------------------------------------------------

STAMP = {"processing_version": "3-aaaa", "processing_config": "c1", "libraries": {"pillow": "11.0"}}
SHA = "ab" * 32


def _manifest(n: int) -> BatchManifest:
    return BatchManifest(batch_id="b-20261201-120000-0000abcd", user_id="ann", created_at="2026-12-01T12:00:00Z",
                         images=[ManifestImage(image_id=f"i{i:04d}", name=f"p{i}.jpg", size=10, sha256=SHA,
                                               sniffed_type="image/jpeg", lake_path=f"raw/b/i{i:04d}")
                                 for i in range(1, n + 1)])


def _doc(image_id: str, outcome: str = "processed", **fields) -> dict:
    renditions = [{"path": f"processed/b/{image_id}/{n}.jpg", "bytes": 1} for n in ("large", "thumb")]
    return {"id": image_id, "image_id": image_id, "name": "p.jpg", "outcome": outcome, "sha256": SHA, "size": 10,
            "code": None if outcome == "processed" else "corrupt",
            "reason": None if outcome == "processed" else "the file is truncated",
            "renditions": renditions if outcome == "processed" else [], "facts": {}, "processing_ms": 5.0,
            "sniffed_type": "image/jpeg", "dagster_run_id": "run-1", "labels": {"x": 1}, "history": [],
            **STAMP, **fields}


def test_only_live_finished_outcomes_of_the_same_processing_whose_renditions_exist_are_taken_over():
    docs = {
        "i0001": _doc("i0001"),                                             # taken over
        "i0002": _doc("i0002", "rejected"),                                 # taken over (rejected with a reason)
        "i0003": _doc("i0003", processing_version="2-aaaa"),                # another code version
        "i0004": _doc("i0004", processing_config="c0"),                     # other limits (what is refused)
        "i0005": _doc("i0005", libraries={"pillow": "10.4"}),               # other image libraries
        "i0006": _doc("i0006", deleted=True),                               # in the trash
        "i0007": _doc("i0007", sha256="cd" * 32),                           # other source bytes
        "i0008": _doc("i0008", renditions=[{"path": "processed/b/i0008/gone.jpg"}]),  # its file is gone
        "i0009": _doc("i0009", renditions=[]),                              # processed, nothing recorded
        "i0010": _doc("i0010", "rejected", reason=None),                    # rejected without a reason
        "i0011": _doc("i0011", "rejected", code="raw_missing"),             # the upload is looked for again
        "i0012": _doc("i0012", outcome="pending"),                          # no outcome
        # i0013: no document
    }
    existing = {r["path"] for d in docs.values() for r in d["renditions"] if "gone" not in r["path"]}
    done = steps.resumable(_manifest(13), docs, STAMP, existing)
    assert sorted(done) == ["i0001", "i0002"]
    # What is taken over is the outcome (as process_batch makes it), not the document around it.
    assert set(done["i0001"]) == set(steps.OUTCOME_FIELDS)
    assert done["i0001"]["renditions"] == docs["i0001"]["renditions"] and "labels" not in done["i0001"]


def test_a_forced_redo_takes_over_only_what_its_own_runs_wrote():
    docs = {"i0001": _doc("i0001"), "i0002": _doc("i0002", dagster_run_id="reprocess-1")}
    existing = {r["path"] for d in docs.values() for r in d["renditions"]}
    assert sorted(steps.resumable(_manifest(2), docs, STAMP, existing)) == ["i0001", "i0002"]
    assert sorted(steps.resumable(_manifest(2), docs, STAMP, existing, runs={"reprocess-1"})) == ["i0002"]
    assert steps.resumable(_manifest(2), docs, STAMP, existing, runs=set()) == {}


def test_the_stamp_follows_the_version_and_the_whole_configuration(tmp_path):
    base = load_settings(data_dir=tmp_path)
    stamp = steps.processing_stamp(base.core_config())
    assert stamp == steps.processing_stamp(base.core_config())
    shaped = steps.processing_stamp(load_settings(data_dir=tmp_path, webp_method=6).core_config())
    limited = steps.processing_stamp(load_settings(data_dir=tmp_path, max_pixels=1_000_000).core_config())
    assert shaped["processing_version"] != stamp["processing_version"]
    assert limited["processing_version"] == stamp["processing_version"]  # limits are not in the version...
    assert limited["processing_config"] != stamp["processing_config"]    # ...but a rejection depends on them


# -- batch runs ------------------------------------------------------------------------------------------

M = 6  # images of the batch: 5 photos and a truncated JPEG (rejected by a worker)
N = 3  # documents the first attempt stores before it dies


class CountingLake:
    """The real lake, counting the reads of raw image bytes (= images handed to an image worker)."""

    def __init__(self, lake):
        self._lake, self.raw_reads = lake, []

    def read(self, path):
        if path.startswith("raw/") and not path.endswith("manifest.json"):
            self.raw_reads.append(path)
        return self._lake.read(path)

    def __getattr__(self, name):
        return getattr(self._lake, name)


class DyingStore:
    """The real metadata store, until the run has stored ``after`` image documents: the next one kills the
    step (a run worker lost mid-batch, as far as what is stored is concerned). ``after`` None: never."""

    def __init__(self, store, after: int | None):
        self._store, self.after = store, after

    def upsert(self, container, doc, **kwargs):
        if container == "images" and self.after is not None:
            if self.after == 0:
                raise RuntimeError("the run worker died")
            self.after -= 1
        return self._store.upsert(container, doc, **kwargs)

    def __getattr__(self, name):
        return getattr(self._store, name)


@pytest.fixture
def batch(offline_settings):
    services = wiring.services(offline_settings)
    photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(320, 240, i * 40, str(i))))
              for i in range(M - 1)]
    truncated = IntakeItem.from_bytes("cut.jpg", jpeg_bytes(synthetic_photo(320, 240, 0, "x"))[:600])
    return services, upload_batch(services, [*photos, truncated], user_id="ann").batch_id


def _resources(settings, services, results, *, lake=None, metadata=None):
    return {**resources_from_settings(settings), "results": results, "lake": lake or services.lake,
            "metadata": metadata or services.metadata}


def _run(instance, settings, services, batch_id, results, *, tags=None, **ports):
    instance.add_dynamic_partitions(batches_partitions.name, [batch_id])
    return materialize([*batch_assets, *batch_asset_checks], partition_key=batch_id, instance=instance,
                       resources=_resources(settings, services, results, **ports), raise_on_error=False,
                       tags=tags)


def _renditions_metadata(result):
    return {k: v.value for k, v in result.asset_materializations_for_node("renditions")[0].metadata.items()}


def _image_events(recorder):
    return [e["event_id"] for e in recorder.events if e["type"] in ("image.processed", "image.rejected")]


@pytest.fixture
def instance():
    return DagsterInstance.ephemeral()


def test_a_run_killed_halfway_is_retried_for_the_rest_only(instance, offline_settings, batch):
    services, batch_id = batch
    recorder = Recorder()
    killed = _run(instance, offline_settings, services, batch_id, recorder,
                  metadata=DyingStore(services.metadata, after=N))
    assert not killed.success
    assert [e.step_key for e in killed.all_events if e.event_type_value == "STEP_FAILURE"] == ["renditions.render_chunk[c0000]"]
    assert len(list(services.metadata.query("images", partition_key=batch_id))) == N
    assert len(_image_events(recorder)) == N  # each stored image was announced at once

    lake = CountingLake(services.lake)
    retried = _run(instance, offline_settings, services, batch_id, recorder, lake=lake)
    assert retried.success
    assert len(lake.raw_reads) == len(set(lake.raw_reads)) == M - N  # the workers saw only the rest
    meta = _renditions_metadata(retried)
    assert (meta["resumed"], meta["images_this_run"]) == (N, M - N)
    assert (meta["processed"], meta["rejected"]) == (M - 1, 1)  # the whole batch
    # Every image is accounted for downstream and announced exactly once over both runs.
    docs = list(services.metadata.query("images", partition_key=batch_id))
    assert sorted(d["outcome"] for d in docs) == ["processed"] * (M - 1) + ["rejected"]
    assert all(d["dagster_run_id"] == retried.run_id for d in docs)
    assert all(e.passed for e in retried.get_asset_check_evaluations())
    events = _image_events(recorder)
    assert len(events) == len(set(events)) == M
    assert [e["type"] for e in recorder.events].count("batch.completed") == 1
    assert _renditions_metadata(_run(instance, offline_settings, services, batch_id, recorder))["resumed"] == M


def test_a_new_processing_version_redoes_every_image(instance, offline_settings, batch, tmp_path):
    services, batch_id = batch
    assert _run(instance, offline_settings, services, batch_id, Recorder()).success
    changed = load_settings(data_dir=tmp_path / "data", workers=2, webp_method=6)  # shapes the output
    lake = CountingLake(services.lake)
    again = _run(instance, changed, services, batch_id, Recorder(), lake=lake)
    assert again.success and len(lake.raw_reads) == M
    assert _renditions_metadata(again)["resumed"] == 0


def test_a_missing_rendition_and_a_deleted_document_are_redone(instance, offline_settings, batch):
    services, batch_id = batch
    assert _run(instance, offline_settings, services, batch_id, Recorder()).success
    docs = sorted((d for d in services.metadata.query("images", partition_key=batch_id)
                   if d["outcome"] == "processed"), key=lambda d: d["image_id"])
    lost, removed = docs[0], docs[1]
    services.lake.delete(lost["renditions"][-1]["path"])
    assert record_review(services.metadata, services.lake, batch_id, "ann", removed["image_id"], "delete", "op")
    lake = CountingLake(services.lake)
    again = _run(instance, offline_settings, services, batch_id, Recorder(), lake=lake)
    assert again.success and _renditions_metadata(again)["resumed"] == M - 2
    assert sorted(path.rsplit("/", 1)[-1] for path in lake.raw_reads) == [lost["image_id"], removed["image_id"]]
    assert services.lake.exists(lost["renditions"][-1]["path"])
    assert services.metadata.read("images", removed["image_id"], batch_id)["deleted"]  # the review still holds


def test_a_reprocess_redoes_the_whole_batch(instance, offline_settings, batch):
    services, batch_id = batch
    assert _run(instance, offline_settings, services, batch_id, Recorder()).success
    lake = CountingLake(services.lake)
    again = _run(instance, offline_settings, services, batch_id, Recorder(), lake=lake, tags={REPROCESS_TAG: "cli"})
    assert again.success and len(lake.raw_reads) == M
    assert _renditions_metadata(again)["resumed"] == 0


# -- a real re-execution from failure (what the run-retry daemon and the UI's "re-execute" do) ------------------

_PORTS: dict = {}  # the ports the job below is built with (Dagster reconstructs it by name, once per process)


def process_batch_for_test():
    from orchestration.definitions import process_batch_job

    return Definitions(assets=batch_assets, asset_checks=batch_asset_checks, jobs=[process_batch_job],
                       resources=_resources(**_PORTS)).resolve_job_def(process_batch_job.name)


def test_a_reprocess_killed_halfway_and_re_executed_from_failure_redoes_only_the_rest(offline_settings, batch):
    """A reprocess redoes the batch, but its own re-execution takes over what it finished before dying."""
    services, batch_id = batch
    store, lake = DyingStore(services.metadata, after=None), CountingLake(services.lake)
    _PORTS.update(settings=offline_settings, services=services, results=Recorder(), metadata=store, lake=lake)
    job = reconstructable(process_batch_for_test)
    tags = {"dagster/partition": batch_id, REPROCESS_TAG: "cli"}  # (the retry daemon copies the parent's tags)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(batches_partitions.name, [batch_id])
        assert execute_job(job, instance, tags=tags).success  # the batch is done once
        store.after = N
        killed = execute_job(job, instance, tags=tags, raise_on_error=False)
        assert not killed.success
        store.after, lake.raw_reads = None, []
        retried = execute_job(job, instance, tags=tags,
                              reexecution_options=ReexecutionOptions.from_failure(killed.run_id, instance))
        assert retried.success
        assert instance.get_run_by_id(retried.run_id).root_run_id == killed.run_id
    # The complete run's documents did not count for the reprocess; its own first attempt's did.
    assert len(lake.raw_reads) == M - N
    assert _renditions_metadata(retried)["resumed"] == N
