"""The daily housekeeping schedule of the local stack (and of any deployment whose lake and store do not
do it themselves): the lake's lifecycle rules (orchestration/domain/lifecycle_rules.json) and the purge
of deleted batches past their restore period.

In Azure both happen in the services — the storage account's management policy (rendered from the same
rules file) and blob soft delete, and Cosmos DB's per-item TTL — so there the job finds nothing to purge
and the lifecycle step finds nothing due (the service deleted it first); running it is harmless.
"""

from datetime import datetime, timezone

from dagster import DefaultScheduleStatus, OpExecutionContext, ResourceParam, ScheduleDefinition, job, op

from orchestration.domain import lifecycle, retention
from orchestration.ports.lake import Lake
from orchestration.ports.metadata import MetadataStore


@op(description="Apply the lake's lifecycle rules, then purge deleted batches past their restore period.")
def housekeeping(context: OpExecutionContext, lake: ResourceParam[Lake], metadata: ResourceParam[MetadataStore]):
    now = datetime.now(timezone.utc)
    expired = lifecycle.apply(lake, now)
    purged = retention.purge(lake, metadata, now=now)
    context.log.info(f"lifecycle deletions per rule: {expired}; purged: {purged}")
    return {"lifecycle": expired, **purged}


@job(description="Daily: lake lifecycle rules and the purge of deleted batches (see sensors/housekeeping.py).")
def housekeeping_job():
    housekeeping()


housekeeping_schedule = ScheduleDefinition(
    name="housekeeping_daily",
    job=housekeeping_job,
    cron_schedule="30 3 * * *",  # 03:30 every day, a quiet hour
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)
