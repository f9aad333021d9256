"""Contract of the Lake port (ADLS Gen2 semantics), run against every adapter."""

from __future__ import annotations

import pytest

from orchestration.ports.lake import InvalidPath, Lake, LakeError, ObjectNotFound
from tests.support.ports import signature_mismatches


def test_adapter_implements_every_method_of_the_port_with_its_signature(lake):
    assert isinstance(lake, Lake)
    assert signature_mismatches(lake, Lake) == []


def test_write_read_exists_and_overwrite(lake):
    assert not lake.exists("a/b/c.bin")
    lake.write("a/b/c.bin", b"one")
    assert lake.exists("a/b/c.bin")
    assert lake.read("a/b/c.bin") == b"one"
    lake.write("a/b/c.bin", b"two-longer")
    assert lake.read("a/b/c.bin") == b"two-longer"


def test_read_missing_raises_object_not_found(lake):
    with pytest.raises(ObjectNotFound) as err:
        lake.read("nope/missing.bin")
    assert "nope/missing.bin" in str(err.value)


def test_list_is_recursive_sorted_and_prefix_scoped(lake):
    for path in ["x/2.bin", "x/1.bin", "x/sub/3.bin", "y/4.bin", "xx/5.bin"]:
        lake.write(path, b"d")
    assert list(lake.list("x")) == ["x/1.bin", "x/2.bin", "x/sub/3.bin"]
    assert list(lake.list("x/")) == ["x/1.bin", "x/2.bin", "x/sub/3.bin"]
    assert list(lake.list("")) == ["x/1.bin", "x/2.bin", "x/sub/3.bin", "xx/5.bin", "y/4.bin"]
    assert list(lake.list("missing")) == []


@pytest.mark.parametrize("bad", ["", "/abs/path", "a/../b", "a/./b", "a//b", "../etc/passwd", "a\\b", ".hidden/x", "a/b/"])
def test_invalid_paths_are_refused(lake, bad):
    with pytest.raises(InvalidPath):
        lake.write(bad, b"x")


def test_soft_delete_hides_then_restore_brings_back(lake):
    lake.write("batch/img.jpg", b"pixels")
    lake.delete("batch/img.jpg")
    assert not lake.exists("batch/img.jpg")
    assert list(lake.list("batch")) == []
    with pytest.raises(ObjectNotFound):
        lake.read("batch/img.jpg")
    deleted = lake.list_deleted("batch")
    assert [d.path for d in deleted] == ["batch/img.jpg"]
    lake.restore("batch/img.jpg")
    assert lake.read("batch/img.jpg") == b"pixels"
    assert lake.list_deleted("batch") == []


def test_restore_picks_newest_deletion_or_the_named_one(lake, clock):
    lake.write("p/f", b"v1")
    lake.delete("p/f")
    clock.advance(minutes=1)
    lake.write("p/f", b"v2")
    lake.delete("p/f")
    versions = lake.list_deleted("p")
    assert len(versions) == 2 and versions[0].deleted_at > versions[1].deleted_at
    lake.restore("p/f")
    assert lake.read("p/f") == b"v2"
    lake.delete("p/f")
    older = [d for d in lake.list_deleted("p") if d.deleted_at == versions[1].deleted_at][0]
    lake.restore("p/f", deletion_id=older.deletion_id)
    assert lake.read("p/f") == b"v1"


def test_restore_refuses_to_overwrite_a_live_object(lake):
    lake.write("p/f", b"old")
    lake.delete("p/f")
    lake.write("p/f", b"new")
    with pytest.raises(LakeError):
        lake.restore("p/f")
    assert lake.read("p/f") == b"new"


def test_retention_expiry_and_purge(lake, clock):
    lake.write("p/f", b"x")
    lake.delete("p/f")
    clock.advance(days=6, hours=23)
    assert len(lake.list_deleted("p")) == 1
    assert lake.purge_expired() == 0
    clock.advance(hours=2)
    assert lake.list_deleted("p") == []
    with pytest.raises(ObjectNotFound):
        lake.restore("p/f")
    assert lake.purge_expired() == 1
    assert lake.purge_expired() == 0


def test_delete_missing_raises(lake):
    with pytest.raises(ObjectNotFound):
        lake.delete("never/was")


def test_list_info_gives_size_and_last_write_time(lake):
    from datetime import datetime, timedelta, timezone

    before = datetime.now(timezone.utc) - timedelta(seconds=5)
    lake.write("info/a.bin", b"12345")
    lake.write("info/sub/b.bin", b"")
    infos = {i.path: i for i in lake.list_info("info/")}
    assert sorted(infos) == ["info/a.bin", "info/sub/b.bin"]
    assert infos["info/a.bin"].size == 5 and infos["info/sub/b.bin"].size == 0
    after = datetime.now(timezone.utc) + timedelta(seconds=5)
    assert all(before <= i.modified_at <= after for i in infos.values())
