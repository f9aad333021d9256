"""Operators' side on the real local stack (daemon, code server, backfill daemon): reprocessing after the
processing changes, and lineage. The version change is a real one: the stack is restarted with WebP turned
off, which changes the renditions asset's code version (processing_version = code + output config)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from orchestration import wiring
from orchestration.adapters.kafka.readers import ResultReader
from orchestration.devtools.sample import jpeg_bytes, synthetic_photo
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.domain.status import batch_status
from orchestration.operate import graphql
from tests.support.stack import DevStack, local_env, settings_from

pytestmark = pytest.mark.stack
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dagster's own stale status of one batch partition, as the asset and partition pages of the UI show it
# ("Code version changed"), asked of the running webserver's GraphQL API.
STALE_QUERY = """
query ($partition: String!) {
  assetNodeOrError(assetKey: {path: ["renditions"]}) {
    ... on AssetNode {
      staleStatusByPartition(partitions: [$partition])
      staleCausesByPartition(partitions: [$partition]) { category reason }
    }
  }
}"""


def _cli(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _wait_completed(services, batch, user, version=None, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = batch_status(services, batch, user)
        docs = list(services.metadata.query("images", partition_key=batch))
        if status["status"] == "completed" and (version is None or all(d["processing_version"] == version
                                                                        for d in docs)):
            batch_doc = services.metadata.read("batches", batch, user)
            if version is None or batch_doc.get("processing_version") == version:
                return status
        time.sleep(1)
    raise AssertionError(f"batch {batch} not completed{' under ' + version if version else ''}: "
                         f"{batch_status(services, batch, user)['status']}")


def test_a_processing_change_shows_as_changed_and_reprocess_redoes_the_batch_once(tmp_path):
    env = local_env(tmp_path, IMGPIPE_OUTPUT_FORMATS="JPEG,WEBP")
    settings = settings_from(env)
    services = wiring.services(settings)
    photos = [IntakeItem.from_bytes(f"p{i}.jpg", jpeg_bytes(synthetic_photo(800, 600, i * 40, str(i))))
              for i in range(3)]
    proc = DevStack(env, "--no-sample")
    try:
        proc.ready()
        batch = upload_batch(services, photos, user_id="olga", metadata={"title": "v1"}).batch_id
        _wait_completed(services, batch, "olga")
    finally:
        proc.stop(timeout=90)
    before = {d["id"]: d for d in services.metadata.query("images", partition_key=batch)}
    old_version = next(iter(before.values()))["processing_version"]
    assert any(p.endswith(".webp") for p in services.lake.list(f"processed/{batch}/"))

    # The processing changes: WebP off. The code location now has another code version for renditions.
    env2 = {**env, "IMGPIPE_OUTPUT_FORMATS": "JPEG"}
    dry = _cli(env2, "reprocess", "--changed", "--dry-run")
    assert dry.returncode == 0 and batch in dry.stdout, dry.stdout + dry.stderr
    proc = DevStack(env2, "--no-sample")
    try:
        proc.ready()
        node = graphql(settings_from(env2), STALE_QUERY, {"partition": batch})["assetNodeOrError"]
        assert node["staleStatusByPartition"] == ["STALE"], node
        assert any(c["category"] == "CODE" for c in node["staleCausesByPartition"][0]), node
        submitted = _cli(env2, "reprocess", "--changed")
        assert submitted.returncode == 0 and "backfill" in submitted.stdout, submitted.stdout + submitted.stderr
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            docs = list(services.metadata.query("images", partition_key=batch))
            if all(d["processing_version"] != old_version for d in docs) and \
                    batch_status(services, batch, "olga")["status"] == "completed":
                break
            time.sleep(1)
        else:
            raise AssertionError("the reprocess backfill did not complete")
        new_version = next(iter(services.metadata.query("images", partition_key=batch)))["processing_version"]
        # The user's events. This stack's broker started empty (it keeps its log in memory) and was given
        # back the batch's earlier events at start-up (old version); then come the reprocessing's.
        reader = ResultReader(settings.kafka_bootstrap, settings.kafka_topic)
        try:
            events = [e for _, e in reader.follow(
                lambda k, e: e.get("batch_id") == batch and e["type"] == "batch.completed"
                and e["processing_version"] == new_version, timeout_seconds=30) if e.get("batch_id") == batch]
        finally:
            reader.close()
    finally:
        proc.stop(timeout=90)
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), ids  # each event once
    assert {e["processing_version"] for e in events} <= {old_version, new_version}
    # 3 images, what each shows (image.understood, from the new renditions), batch.completed
    assert len([e for e in events if e["processing_version"] == new_version]) == 7

    docs = {d["id"]: d for d in services.metadata.query("images", partition_key=batch)}
    assert sorted(docs) == sorted(before)  # same documents, by id: no duplicates
    assert new_version != old_version
    for doc in docs.values():
        assert {r["format"] for r in doc["renditions"]} == {"JPEG"}
        assert [h["processing_version"] for h in doc["history"]] == [old_version]  # the reprocessing is remembered
        assert doc["dagster_run_id"] != before[doc["id"]]["dagster_run_id"]
    files = sorted(services.lake.list(f"processed/{batch}/"))
    assert not any(p.endswith(".webp") for p in files), files  # old renditions replaced, none left over
    assert len(files) == 3 * 3 + 1  # 3 images x 3 JPEG renditions + outcomes.json

    # Lineage of one image: who/when, source, run + link, versions, renditions (sha256 = the lake's bytes),
    # near-duplicates, history.
    out = _cli(env2, "lineage", batch, "i0001", "--json")
    assert out.returncode == 0, out.stderr
    chain = json.loads(out.stdout)
    assert chain["uploaded_by"] == "olga" and chain["uploaded_at"]
    assert [r["processing_version"] for r in chain["runs"]] == [old_version, new_version]
    [image] = chain["images"]
    assert image["source"]["sha256"] == hashlib.sha256(services.lake.read(f"raw/{batch}/i0001")).hexdigest()
    assert image["source"]["raw_path"] == f"raw/{batch}/i0001"
    assert image["run"]["url"].endswith(f"/runs/{image['run']['run_id']}")
    assert image["libraries"]["pillow"] and image["libraries"]["libjpeg_turbo"] and image["libraries"]["libwebp"]
    for r in image["renditions"]:
        assert hashlib.sha256(services.lake.read(r["path"])).hexdigest() == r["sha256"]
    assert image["history"][0]["processing_version"] == old_version
    # Each understanding result names its model, the model file's sha256 and the rendition it looked at.
    from assets.core.understand.models import MODEL_FILES

    for task in ("labels", "moderation", "faces"):
        u = image["understanding"][task]
        assert u["model"]["sha256"] == MODEL_FILES[task].sha256 and u["model"]["code_version"]
        assert u["source"].startswith(f"processed/{batch}/i0001/")
    assert image["understanding"]["moderation"]["decision"] == "allow"
    text = _cli(env2, "lineage", batch, "i0001")
    assert text.returncode == 0 and "earlier:" in text.stdout and image["run"]["url"] in text.stdout
    assert f"sha256 {MODEL_FILES['labels'].sha256}" in text.stdout and "labels: " in text.stdout
    # A new face model (here: its threshold) changes only the faces asset's version: --asset faces --changed
    # selects the batch, --asset labels --changed does not.
    env3 = {**env2, "IMGPIPE_FACE_MIN_SCORE": "0.7"}
    faces = _cli(env3, "reprocess", "--changed", "--asset", "faces", "--dry-run")
    assert faces.returncode == 0 and batch in faces.stdout, faces.stdout + faces.stderr
    labels = _cli(env3, "reprocess", "--changed", "--asset", "labels", "--dry-run")
    assert labels.returncode == 0 and "nothing to reprocess" in labels.stdout, labels.stdout + labels.stderr
    missing = _cli(env2, "lineage", "b-nope")
    assert missing.returncode == 4 and "no such batch" in missing.stderr and "Traceback" not in missing.stderr
