"""The daily BI export: a real batch processed by the assets, then one day's Parquet table in the lake,
read back with pandas and DuckDB (Hive-style day= folders) as BI tools read it."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pandas as pd
from dagster import DagsterInstance, materialize

from assets.analytics import COLUMNS, LABEL_COLUMNS, facts_path, image_facts_daily, labels_path
from assets.batch import batch_asset_checks, batch_assets
from orchestration import wiring
from orchestration.domain import retention
from orchestration.domain.intake import IntakeItem, upload_batch
from orchestration.devtools.sample import make_sample_batch
from orchestration.partitions import batches_partitions
from orchestration.resources import resources_from_settings


def test_one_day_of_image_facts_as_parquet_readable_by_pandas_and_duckdb(settings, tmp_path):
    services = wiring.services(settings)
    instance = DagsterInstance.ephemeral()
    resources = resources_from_settings(settings)
    batches = []
    for user in ("u-one", "u-two"):
        files = make_sample_batch(tmp_path / user)
        batch = upload_batch(services, [IntakeItem.from_path(p) for p in files], user_id=user).batch_id
        instance.add_dynamic_partitions(batches_partitions.name, [batch])
        assert materialize([*batch_assets, *batch_asset_checks], partition_key=batch, instance=instance,
                           resources=resources).success
        batches.append(batch)
    retention.delete_batch(services, batches[1], "u-two", deleted_by="u-two")  # deleted: left out
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    result = materialize([image_facts_daily], partition_key=day, instance=instance, resources=resources)
    assert result.success
    [mat] = result.asset_materializations_for_node("image_facts_daily")
    assert mat.metadata["rows"].value == 7 and mat.metadata["users"].value == 1

    frame = pd.read_parquet(io.BytesIO(services.lake.read(facts_path(day))))
    assert list(frame.columns) == COLUMNS and len(frame) == 7
    assert set(frame["batch_id"]) == {batches[0]} and set(frame["day"]) == {day}
    assert sorted(frame["outcome"].value_counts().items()) == [("processed", 5), ("rejected", 2)]
    processed = frame[frame["outcome"] == "processed"]
    assert (processed["megapixels"] > 0).all() and (processed["rendition_bytes"] > 0).all()
    assert set(frame.loc[frame["outcome"] == "rejected", "reason_code"]) <= {"not_an_image", "unsupported_type",
                                                                             "corrupt", "too_large", "decode_failed",
                                                                             "truncated", "checksum_mismatch"} | set(
        frame["reason_code"].dropna())

    import duckdb

    root = settings.lake_dir / "analytics" / "image_facts"
    rows = duckdb.sql(f"SELECT day, outcome, count(*) AS n FROM read_parquet('{root}/*/*.parquet', "
                      "hive_partitioning=true) GROUP BY ALL ORDER BY outcome").fetchall()
    assert [(str(d), o, n) for d, o, n in rows] == [(day, "processed", 5), (day, "rejected", 2)]
    # What the images show: the top label, moderation and faces per image, and the labels table (5 per processed
    # image, with the model's code version) that joins it.
    assert processed["top_label"].notna().all() and set(processed["moderation"]) == {"allow"}
    assert processed["faces"].notna().all() and processed["labels_model"].nunique() == 1
    labels = pd.read_parquet(io.BytesIO(services.lake.read(labels_path(day))))
    assert list(labels.columns) == LABEL_COLUMNS and len(labels) == 5 * 5
    assert set(labels["rank"]) == {1, 2, 3, 4, 5} and labels["score"].between(0, 1).all()
    assert set(labels["batch_id"]) == {batches[0]}
    labels_root = settings.lake_dir / "analytics" / "image_labels"
    joined = duckdb.sql(f"SELECT count(*) FROM read_parquet('{labels_root}/*/*.parquet', hive_partitioning=true) l "
                        f"JOIN read_parquet('{root}/*/*.parquet', hive_partitioning=true) f USING (batch_id, image_id) "
                        "WHERE l.rank = 1 AND l.label = f.top_label").fetchall()[0][0]
    assert joined == 5
    # A re-run of the same day overwrites its file: still 7 rows.
    assert materialize([image_facts_daily], partition_key=day, instance=instance, resources=resources).success
    assert len(pd.read_parquet(io.BytesIO(services.lake.read(facts_path(day))))) == 7


def test_the_daily_schedule_exports_yesterday():
    from dagster import build_schedule_context

    from assets.analytics import bi_export_schedule

    ctx = build_schedule_context(scheduled_execution_time=datetime(2026, 11, 26, 0, 30, tzinfo=timezone.utc))
    request = bi_export_schedule(ctx)
    assert request.partition_key == "2026-11-25" and request.run_key == "bi-2026-11-25"
