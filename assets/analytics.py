"""The BI export: one table of image facts per day, as Parquet under the lake's ``analytics/`` prefix.

    analytics/image_facts/day=YYYY-MM-DD/part-0.parquet      (Hive-style: DuckDB, pandas, Spark, Power BI,
                                                              Microsoft Fabric read the folder as one table)
    analytics/image_labels/day=YYYY-MM-DD/part-0.parquet     (one row per image and label: rank, label, score,
                                                              the model and its version; joins image_facts on
                                                              batch_id + image_id)

One row per image processed that day (by ``processed_day``), deleted batches left out: user (the opaque
id, never an e-mail), batch, day, outcome, reason code, format, size, megapixels, bytes in and out,
processing ms, near-duplicate count, processing version, and what the image shows: top label, moderation
decision and highest score, face count, with the models' code versions (to compare models). A daily schedule materialises yesterday's
partition; a backfill in the UI rebuilds any range (each day overwrites its own file).

In Azure, BI tools read the same folder from ADLS Gen2 (or mirror Cosmos DB into Microsoft Fabric; see
docs/operations.md).
"""


import io
from datetime import timedelta

import pandas as pd
from dagster import (
    AssetExecutionContext,
    DailyPartitionsDefinition,
    MaterializeResult,
    MetadataValue,
    ResourceParam,
    asset,
    DefaultScheduleStatus,
    RunRequest,
    ScheduleEvaluationContext,
    define_asset_job,
    schedule,
)

from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore
from orchestration.settings import load_settings

COLUMNS = ["user_id", "batch_id", "image_id", "day", "outcome", "reason_code", "format", "width", "height",
           "megapixels", "source_bytes", "rendition_bytes", "processing_ms", "near_duplicates", "processing_version",
           "top_label", "moderation", "moderation_score", "faces", "labels_model", "moderation_model", "faces_model"]
LABEL_COLUMNS = ["user_id", "batch_id", "image_id", "day", "rank", "label", "score", "model", "model_version",
                 "model_code_version"]

# end_offset=1: today's partition exists too (an operator may export "today so far"; the schedule below
# always exports the last complete day).
daily = DailyPartitionsDefinition(start_date="2026-01-01", timezone="UTC", end_offset=1)


def facts_path(day: str) -> str:
    return f"analytics/image_facts/day={day}/part-0.parquet"


def labels_path(day: str) -> str:
    return f"analytics/image_labels/day={day}/part-0.parquet"


def _code_version(result: dict | None) -> str | None:
    return ((result or {}).get("model") or {}).get("code_version")


def image_labels(docs) -> pd.DataFrame:
    """One row per (image, label) from image documents (pure; deleted ones and errors left out)."""
    rows = []
    for d in docs:
        got = d.get("labels") or {}
        if d.get("deleted") or "error" in got:
            continue
        model = got.get("model") or {}
        for rank, label in enumerate(got.get("labels") or (), start=1):
            rows.append({"user_id": d.get("user_id"), "batch_id": d.get("batch_id"), "image_id": d.get("image_id"),
                         "day": d.get("processed_day") or (d.get("processed_at") or "")[:10], "rank": rank,
                         "label": label.get("name"), "score": label.get("score"), "model": model.get("model"),
                         "model_version": model.get("version"), "model_code_version": model.get("code_version")})
    return pd.DataFrame(rows, columns=LABEL_COLUMNS).astype({"rank": "Int64", "score": "float64"})


def image_facts(docs) -> pd.DataFrame:
    """The table's rows from image documents (pure; deleted ones are left out)."""
    rows = []
    for d in docs:
        if d.get("deleted"):
            continue
        facts = d.get("facts") or {}
        width, height = facts.get("width"), facts.get("height")
        rows.append({
            "user_id": d.get("user_id"), "batch_id": d.get("batch_id"), "image_id": d.get("image_id"),
            "day": d.get("processed_day") or (d.get("processed_at") or "")[:10],
            "outcome": d.get("outcome"), "reason_code": d.get("code"),
            "format": facts.get("format") or d.get("sniffed_type"),
            "width": width, "height": height,
            "megapixels": round(width * height / 1e6, 3) if width and height else None,
            "source_bytes": d.get("size"),
            "rendition_bytes": sum(r.get("bytes") or 0 for r in d.get("renditions") or ()),
            "processing_ms": d.get("processing_ms"),
            "near_duplicates": len(d.get("near_duplicates") or ()),
            "processing_version": d.get("processing_version"),
            "top_label": ((d.get("labels") or {}).get("labels") or [{}])[0].get("name"),
            "moderation": (d.get("moderation") or {}).get("decision"),
            "moderation_score": max(((d.get("moderation") or {}).get("scores") or {}).values(), default=None),
            "faces": (d.get("faces") or {}).get("count"),
            "labels_model": _code_version(d.get("labels")),
            "moderation_model": _code_version(d.get("moderation")),
            "faces_model": _code_version(d.get("faces")),
        })
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"width": "Int64", "height": "Int64", "source_bytes": "Int64", "rendition_bytes": "Int64",
                         "near_duplicates": "Int64", "megapixels": "float64", "processing_ms": "float64",
                         "moderation_score": "float64", "faces": "Int64"})


@asset(
    partitions_def=daily,
    group_name="analytics",
    code_version="2",
    kinds={"parquet", {"local": "file", "emulated": "azurite", "azure": "adls"}[load_settings().profile]},
    description="Daily tables for BI: image facts, and the labels of each image (Parquet under the lake's "
    "analytics/ prefix).",
)
def image_facts_daily(context: AssetExecutionContext, lake: ResourceParam[Lake],
                      metadata: ResourceParam[MetadataStore]) -> MaterializeResult:
    day = context.partition_key
    docs = list(metadata.query("images", {"processed_day": day}))
    frame, labels = image_facts(docs), image_labels(docs)
    path = facts_path(day)
    for table, where in ((frame, path), (labels, labels_path(day))):
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        lake.write(where, buffer.getvalue(), content_type="application/vnd.apache.parquet")
    return MaterializeResult(metadata={
        "rows": len(frame), "path": MetadataValue.path(path),
        "label_rows": len(labels), "labels_path": MetadataValue.path(labels_path(day)),
        "flagged": int((frame["moderation"] == "flag").sum()),
        "processed": int((frame["outcome"] == "processed").sum()),
        "rejected": int((frame["outcome"] == "rejected").sum()),
        "users": int(frame["user_id"].nunique()),
    })


bi_export_job = define_asset_job("bi_export", selection=[image_facts_daily],
                                 description="Write one day of the BI table.")
@schedule(job=bi_export_job, cron_schedule="30 0 * * *", execution_timezone="UTC",
          default_status=DefaultScheduleStatus.RUNNING, description="00:30 UTC: yesterday's BI table.")
def bi_export_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    day = (context.scheduled_execution_time - timedelta(days=1)).strftime("%Y-%m-%d")
    return RunRequest(run_key=f"bi-{day}", partition_key=day)
