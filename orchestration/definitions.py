"""The imgpipe code location: what `dagster dev -w workspace.yaml` and the Kubernetes user deployment load.

Where things are:
- a batch enters in ``orchestration.domain.intake`` (`imgpipe upload` and the web app's upload page) and
  travels on the queue;
- ``sensors.batch_sensor`` turns each queue message into one run of ``process_batch`` (a batch of at least
  IMGPIPE_FANOUT_MIN_IMAGES images: of ``process_batch_fanout``);
- ``assets.batch`` holds the four assets of that run; images change only in ``assets.core``;
- the outside services sit behind ``orchestration.ports`` with adapters in ``orchestration.adapters``,
  chosen (and created once per process) in ``orchestration.wiring``; ``orchestration.resources`` hands
  them to assets and sensors, configured only by ``orchestration.settings`` (never by run config).

Executor: ``in_process_executor``. A batch run is four short steps that hand data over through the lake;
the default multiprocess executor spends ~1.5 s starting a process per step (≈10 s per run against ≈5 s
measured on a 2-core box), while parallelism inside a step comes from the image worker pool. Under
Kubernetes the run itself gets its own pod (K8sRunLauncher) either way.

A very large batch runs ``process_batch_fanout`` instead: the same assets, whose renditions graph then has a
step per chunk of images, with an executor that runs steps apart — processes locally (multiprocess), a pod
per step on Kubernetes (k8s_job_executor, IMGPIPE_RUN_LAUNCHER=k8s) — at most IMGPIPE_FANOUT_MAX_CONCURRENT
at once per run (docs/operations.md "Fan-out of very large batches").
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, ExecutorDefinition, define_asset_job, in_process_executor, multiprocess_executor

from assets.analytics import bi_export_job, bi_export_schedule, image_facts_daily
from assets.batch import batch_asset_checks, batch_assets
from orchestration.resources import resources_from_settings
from orchestration.settings import Settings, check_profile, load_settings
from sensors.batch_sensor import build_batch_sensor, build_cancel_sensor, build_failure_sensor, step_k8s_config
from sensors.deletion_sensor import build_deletion_sensor
from sensors.events_sensor import build_events_sensor
from sensors.housekeeping import housekeeping_job, housekeeping_schedule
from sensors.reconcile_sensor import build_reconcile_sensor


def fanout_executor(s: Settings) -> ExecutorDefinition:
    """Steps apart, at most ``fanout_max_concurrent`` at once per run: a pod per step sized for a chunk on
    Kubernetes (on top of the run launcher's runK8sConfig: the run pool), processes of this machine locally."""
    config = {"max_concurrent": s.fanout_max_concurrent}
    if s.run_launcher == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured({**config, "step_k8s_config": step_k8s_config(s)}, name="k8s_fanout")
    return multiprocess_executor.configured(config, name="multiprocess_fanout")


settings = check_profile(load_settings())

process_batch_job = define_asset_job(
    name="process_batch",
    selection=AssetSelection.assets(*batch_assets),
    executor_def=in_process_executor,
    description="Process one batch (one dynamic partition): renditions, documents, Kafka events.",
)
process_batch_fanout_job = define_asset_job(
    name="process_batch_fanout",
    selection=AssetSelection.assets(*batch_assets),
    executor_def=fanout_executor(settings),
    description="Process one very large batch (one dynamic partition, IMGPIPE_FANOUT_MIN_IMAGES images or more): "
    "as process_batch, its renditions in chunks, each chunk a step of its own (a pod on Kubernetes).",
)

defs = Definitions(
    assets=[*batch_assets, image_facts_daily],
    asset_checks=batch_asset_checks,
    jobs=[process_batch_job, process_batch_fanout_job, housekeeping_job, bi_export_job],
    schedules=[housekeeping_schedule, bi_export_schedule],
    sensors=[build_batch_sensor(process_batch_job, fanout_job=process_batch_fanout_job, settings=settings),
             build_failure_sensor(process_batch_job),
             build_cancel_sensor(process_batch_job),
             build_reconcile_sensor(settings=settings),
             build_deletion_sensor(settings=settings, asset_keys=[key for a in batch_assets for key in a.keys]),
             build_events_sensor(settings=settings)],
    resources=resources_from_settings(settings),
    # Backfills and UI materialisations run the implicit asset job: in one process too (see above).
    executor=in_process_executor,
)
