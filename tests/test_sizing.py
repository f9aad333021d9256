"""Run pods sized by their batch: the band a batch gets (orchestration/domain/sizing.py) and the bands'
setting (IMGPIPE_RUN_SIZE_BANDS), which refuses what cannot be meant, naming the variable."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError

from orchestration.domain.manifest import BatchManifest, ManifestImage, Refusal
from orchestration.domain.sizing import batch_load, choose_band
from orchestration.settings import (
    ConfigurationError,
    Settings,
    check_profile,
    describe_validation_error,
    load_settings,
)

MIB = 1024**2
BANDS = Settings().run_size_bands


def _band(images: int, nbytes: int, bands=BANDS) -> str:
    return choose_band(bands, images, nbytes).name


@pytest.mark.parametrize("images,nbytes,band", [
    (1, 1, "small"), (8, 64 * MIB, "small"),  # both bounds are inclusive
    (9, 1, "medium"), (1, 64 * MIB + 1, "medium"),  # over either bound: the next band
    (100, 1024 * MIB, "medium"), (101, 1, "large"), (2, 1024 * MIB + 1, "large"), (10_000, 10**12, "large"),
])
def test_a_batch_gets_the_first_band_it_fits(images, nbytes, band):
    assert _band(images, nbytes) == band


def test_the_default_bands_size_pods_and_workers_together():
    small, medium, large = BANDS
    assert (small.requests, small.limits, small.workers) == (
        {"cpu": "500m", "memory": "1Gi"}, {"cpu": "1", "memory": "2Gi"}, 1)
    assert (medium.requests, medium.limits, medium.workers) == (
        {"cpu": "2", "memory": "2Gi"}, {"cpu": "2", "memory": "4Gi"}, 2)
    assert (large.requests, large.limits, large.workers) == (
        {"cpu": "3", "memory": "6Gi"}, {"cpu": "3", "memory": "8Gi"}, 3)
    assert {b.pool for b in BANDS} == {"runs"}


def test_refused_files_do_not_count():
    def image(i: int, refused: bool) -> ManifestImage:
        return ManifestImage(image_id=f"i{i:04d}", name=f"{i}.jpg", size=1000 + i, sniffed_type="image/jpeg",
                             refused=Refusal(code="file_too_large", reason="too large") if refused else None)

    manifest = BatchManifest(batch_id="b-20260101-000000-0000abcd", user_id="alice",
                             created_at=datetime.now(timezone.utc),
                             images=[image(i, refused=i > 3) for i in range(1, 13)])
    assert batch_load(manifest) == (3, 1001 + 1002 + 1003)
    assert _band(*batch_load(manifest)) == "small"  # 12 files, 3 to process


def test_bands_are_overridden_by_the_environment(monkeypatch, tmp_path):
    bands = [{"name": "tiny", "max_images": 2, "cpu": "250m", "memory": "1Gi", "memory_limit": "2Gi"},
             {"name": "huge", "cpu": 6, "memory": "12Gi", "pool": "bigruns"}]
    monkeypatch.setenv("IMGPIPE_RUN_SIZE_BANDS", json.dumps(bands))
    s = load_settings(data_dir=tmp_path)
    assert [b.name for b in s.run_size_bands] == ["tiny", "huge"]
    assert _band(2, 10**9, s.run_size_bands) == "tiny" and _band(3, 1, s.run_size_bands) == "huge"
    huge = s.run_size_bands[1]
    assert huge.cpu == "6" and huge.limits == {"cpu": "6", "memory": "12Gi"} and huge.workers == 6
    assert s.run_size_bands[0].workers == 1  # a fraction of a CPU still gets one worker
    # what `imgpipe dev` hands its child processes reads back the same
    monkeypatch.setenv("IMGPIPE_RUN_SIZE_BANDS", s.to_env()["IMGPIPE_RUN_SIZE_BANDS"])
    assert load_settings(data_dir=tmp_path).run_size_bands == s.run_size_bands


BIG = {"name": "big", "cpu": "2", "memory": "4Gi"}


@pytest.mark.parametrize("bands,says", [
    ([{"name": "a", "max_images": 10, "cpu": "1", "memory": "2Gi"}, {**BIG, "max_images": 5}],
     "bands must ascend: 'big' (max_images 5"),
    ([{"name": "a", "max_images": 10, "cpu": "1", "memory": "2Gi"}, {**BIG, "max_images": 10}],
     "bands must ascend"),
    ([{"name": "a", "max_images": 10, "max_bytes": 10**6, "cpu": "1", "memory": "2Gi"},
      {**BIG, "max_images": 20, "max_bytes": 10**9}],
     "the last band ('big') must have no max_images or max_bytes"),
    ([BIG, {**BIG, "name": "big"}], "band names repeat"),
    ([], "at least one band"),
    ([{**BIG, "memory": "4G"}], "'4G' is not a positive quantity like '512Mi' or '2Gi'"),
    ([{**BIG, "cpu": "two"}], "'two' is not a positive quantity like '500m'"),
    ([{**BIG, "cpu": "0"}], "'0' is not a positive quantity"),
    ([{**BIG, "cpu_limit": "1"}], "band 'big': a limit is below its request"),
    ([{**BIG, "memory_limit": "1Gi"}], "band 'big': a limit is below its request"),
    ([{**BIG, "name": "Big Band"}], "should match pattern"),
    ([{**BIG, "gpus": 1}], "Extra inputs are not permitted"),
    ("small:8,large", "Expecting value"),  # not JSON
])
def test_impossible_bands_are_refused_naming_the_variable(monkeypatch, tmp_path, bands, says):
    monkeypatch.setenv("IMGPIPE_RUN_SIZE_BANDS", bands if isinstance(bands, str) else json.dumps(bands))
    with pytest.raises(ValidationError) as err:
        load_settings(data_dir=tmp_path)
    message = describe_validation_error(err.value)
    assert "IMGPIPE_RUN_SIZE_BANDS" in message and says in message, message


def test_a_band_whose_memory_cannot_hold_its_workers_is_refused_at_start_up(tmp_path):
    # 2 workers at their 1024 MiB cap + the run process need 2560 MiB: a 2Gi pod would be killed whole
    s = load_settings(data_dir=tmp_path, run_size_bands=[{"name": "tight", "cpu": "2", "memory": "2Gi"}])
    with pytest.raises(ConfigurationError, match=r"band 'tight'.s memory limit 2Gi < 2 worker\(s\) × "
                                                 r"IMGPIPE_WORKER_MEMORY_MB 1024 MiB"):
        check_profile(s)
    assert check_profile(load_settings(data_dir=tmp_path, worker_memory_mb=512,
                                       run_size_bands=s.run_size_bands))  # smaller workers fit
    assert check_profile(load_settings(data_dir=tmp_path))  # the defaults fit


def test_the_operations_guide_shows_the_default_bands():
    text = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| [^|]+ \| (\S+) / (\S+) \| (\S+) / (\S+) \| (\d+) \| `(\w+)` \|$", text, re.M)
    assert rows == [(b.name, b.cpu, b.limits["cpu"], b.memory, b.limits["memory"], str(b.workers), b.pool)
                    for b in BANDS]


def test_custom_bands_reach_a_second_shell_through_stack_json(tmp_path):
    from orchestration.devtools.dev_settings import load_dev_settings
    from orchestration.devtools.stack import stack_values
    from orchestration.settings import write_stack_file

    bands = [{"name": "only", "cpu": "1", "memory": "2Gi"}]
    s = load_dev_settings(data_dir=tmp_path, run_size_bands=bands)
    write_stack_file(s, stack_values(s), pid=os.getpid())
    assert load_settings(data_dir=tmp_path).run_size_bands == s.run_size_bands
