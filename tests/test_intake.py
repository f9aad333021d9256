"""Intake (where a batch enters), `imgpipe upload` and `imgpipe status` as scripts use them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from orchestration.domain.intake import IntakeError, IntakeItem, expand_paths, parse_metadata, upload_batch
from orchestration.domain.manifest import BatchManifest
from orchestration.devtools.sample import synthetic_photo, jpeg_bytes, make_sample_batch
from orchestration.settings import load_settings
from orchestration.domain.status import batch_status
from orchestration import wiring

JPEG = jpeg_bytes(synthetic_photo(80, 60, 0, "x"))


def test_upload_stores_raw_bytes_records_batch_and_sends_claim_check(services):
    result = upload_batch(
        services,
        [IntakeItem.from_bytes("one.jpg", JPEG), IntakeItem.from_bytes("two.jpg", JPEG)],
        user_id="alice",
        metadata={"title": "Trip"},
    )
    assert [f.accepted for f in result.files] == [True, True] and result.sent
    [msg] = services.queue.receive()
    assert msg.message_id == result.batch_id
    manifest = BatchManifest.model_validate_json(msg.body)
    assert len(msg.body) < 2000 and JPEG[:200] not in msg.body  # ids and hashes, never the image bytes
    assert [i.name for i in manifest.images] == ["one.jpg", "two.jpg"]
    assert manifest.metadata == {"title": "Trip"} and manifest.user_id == "alice"
    for img in manifest.images:
        assert services.lake.read(img.lake_path) == JPEG
        assert img.sniffed_type == "image/jpeg" and len(img.sha256) == 64
    doc = services.metadata.read("batches", result.batch_id, "alice")
    assert doc["status"] == "received" and doc["image_count"] == 2


def test_type_is_sniffed_from_bytes_not_the_name(services):
    result = upload_batch(
        services,
        [IntakeItem.from_bytes("photo.jpg", b"plain text, honest"), IntakeItem.from_bytes("data.bin", JPEG),
         IntakeItem.from_bytes("empty.png", b"")],
        user_id="alice",
    )
    by_name = {f.name: f for f in result.files}
    assert not by_name["photo.jpg"].accepted and "text/plain" in by_name["photo.jpg"].reason
    assert by_name["data.bin"].accepted and by_name["data.bin"].sniffed_type == "image/jpeg"
    assert by_name["empty.png"].code == "empty_file"
    # Refused files are listed in the batch with their reason, but their bytes are not kept.
    manifest = BatchManifest.model_validate_json(services.queue.receive()[0].body)
    refused = [i for i in manifest.images if i.refused]
    assert len(refused) == 2 and all(i.lake_path is None for i in refused)
    assert [p for p in services.lake.list(f"raw/{result.batch_id}") if not p.endswith("manifest.json")] == [
        f"raw/{result.batch_id}/i0002"]


def test_oversize_file_is_refused_without_reading_it(offline_settings):
    services = wiring.services(load_settings(data_dir=offline_settings.data_dir, max_file_bytes=1000))

    def explode():
        raise AssertionError("an oversize file must not be read")

    result = upload_batch(
        services, [IntakeItem("huge.jpg", 10_000, explode), IntakeItem.from_bytes("ok.jpg", JPEG[:900])], user_id="bob"
    )
    huge = result.files[0]
    assert not huge.accepted and huge.code == "file_too_large" and "10,000" in huge.reason
    manifest = BatchManifest.model_validate_json(services.queue.receive()[0].body)
    assert manifest.images[0].lake_path is None and manifest.images[0].refused.code == "file_too_large"


def test_file_names_cannot_traverse_paths(services):
    result = upload_batch(services, [IntakeItem.from_bytes("../../etc/passwd", JPEG)], user_id="alice")
    assert result.files[0].name == "passwd"
    manifest = BatchManifest.model_validate_json(services.queue.receive()[0].body)
    assert manifest.images[0].lake_path == f"raw/{result.batch_id}/i0001"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"user_id": "../evil"}, "user id"),
        ({"user_id": ""}, "user id"),
        ({"user_id": "ok", "metadata": {"bad key!": "v"}}, "metadata key"),
        ({"user_id": "ok", "metadata": {"k": "v" * 20000}}, "limit"),
    ],
)
def test_batch_level_errors_are_clear(services, kwargs, match):
    with pytest.raises(IntakeError, match=match):
        upload_batch(services, [IntakeItem.from_bytes("a.jpg", JPEG)], **kwargs)
    assert services.queue.active_message_count() == 0


def test_empty_batch_and_missing_path_are_errors(services, tmp_path):
    with pytest.raises(IntakeError, match="at least one file"):
        upload_batch(services, [], user_id="alice")
    with pytest.raises(IntakeError, match="nope.jpg"):
        expand_paths([tmp_path / "nope.jpg"])
    with pytest.raises(IntakeError, match="key=value"):
        parse_metadata(["novalue"])


def test_expand_paths_recurses_and_skips_hidden(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.jpg").write_bytes(JPEG)
    (tmp_path / "d" / "sub" / "b.jpg").write_bytes(JPEG)
    (tmp_path / "d" / ".DS_Store").write_bytes(b"x")
    assert [p.name for p in expand_paths([tmp_path / "d"])] == ["a.jpg", "b.jpg"]


def test_status_shows_pending_and_intake_rejections_before_the_run(services):
    result = upload_batch(
        services, [IntakeItem.from_bytes("a.jpg", JPEG), IntakeItem.from_bytes("b.txt", b"words")], user_id="alice"
    )
    status = batch_status(services, result.batch_id)
    assert status["status"] == "received"
    assert [(i["name"], i["outcome"]) for i in status["images"]] == [("a.jpg", "pending"), ("b.txt", "rejected")]
    assert "text/plain" in status["images"][1]["reason"]


def _cli(args, data_dir):
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(data_dir)}
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_cli_upload_json_then_status_json(tmp_path):
    files = make_sample_batch(tmp_path / "in")
    up = _cli(["upload", str(tmp_path / "in"), "--user", "carol", "--meta", "title=Sample", "--json"], tmp_path / "data")
    assert up.returncode == 0, up.stderr
    batch_id = json.loads(up.stdout)["batch_id"]
    assert "not_really_a_photo.jpg" in up.stderr and "text/plain" in up.stderr  # named, with the reason

    st = _cli(["status", batch_id, "--json"], tmp_path / "data")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["status"] == "received" and len(status["images"]) == len(files)
    assert set(status["images"][0]) >= {"name", "outcome", "reason", "renditions"}

    missing = _cli(["status", "b-20990101-000000-00000000"], tmp_path / "data")
    assert missing.returncode == 4 and "no such batch" in missing.stderr


def test_cli_reports_bad_configuration_naming_the_variable(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "orchestration.cli", "status", "x"],
        env={**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path), "IMGPIPE_MAX_FILE_BYTES": "lots"},
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0 and "IMGPIPE_MAX_FILE_BYTES" in proc.stderr


# -- input edge cases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{"user_id": "alice\n"}, {"user_id": "alice", "metadata": {"key\n": "v"}}])
def test_a_trailing_newline_is_refused_before_anything_is_written(services, kwargs):
    with pytest.raises(IntakeError):
        upload_batch(services, [IntakeItem.from_bytes("a.jpg", JPEG)], **kwargs)
    assert list(services.lake.list("raw")) == [] and services.queue.active_message_count() == 0


def test_directory_expansion_does_not_follow_links_out_of_it(tmp_path):
    from orchestration.domain.intake import expand_paths

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(JPEG)
    upload = tmp_path / "upload"
    (upload / "sub").mkdir(parents=True)
    (upload / "a.jpg").write_bytes(JPEG)
    (upload / "link-to-secret.jpg").symlink_to(outside / "secret.jpg")
    (upload / "linked-dir").symlink_to(outside, target_is_directory=True)
    (upload / "sub" / "again.jpg").symlink_to(upload / "a.jpg")  # inside: the same file, taken once
    os.mkfifo(upload / "pipe.jpg")
    got = [p.relative_to(upload).as_posix() for p in expand_paths([upload])]
    assert got == ["a.jpg"]


def test_a_path_that_is_not_a_file_says_what_it_is(tmp_path):
    from orchestration.domain.intake import expand_paths

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(IntakeError, match="named pipe"):
        expand_paths([tmp_path / "pipe"])
    with pytest.raises(IntakeError, match="no such file"):
        expand_paths([tmp_path / "missing.jpg"])


def test_a_batch_whose_record_would_not_fit_the_store_is_refused_before_anything_is_stored(offline_settings):
    """Cosmos DB keeps at most 2 MB per item, and a batch's document lists its files and its sent events: a
    batch that would outgrow it is refused with how to split it, before any file is stored or queued; the
    most a laptop-named 10,000-photo batch needs still fits."""
    from orchestration.domain.intake import BATCH_RECORD_LIMIT, batch_record_bytes

    services = wiring.services(offline_settings.model_copy(update={"max_files_per_batch": 20_000}))
    assert batch_record_bytes([f"IMG_{n:04d}.JPG" for n in range(10_000)], {"title": "Trip"}) <= BATCH_RECORD_LIMIT
    items = [IntakeItem.from_bytes(f"{'long name of a photo ' * 4}{n}.jpg", b"x") for n in range(12_000)]
    with pytest.raises(IntakeError, match=r"12000 files make a batch record of about 3\.\d MB.*batches of up to "
                                          r"about \d{4} files"):
        upload_batch(services, items, user_id="ann")
    assert list(services.lake.list("raw/")) == [] and not list(services.metadata.query("batches"))
    assert services.queue.active_message_count() == 0
