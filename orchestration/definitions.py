"""The imgpipe code location: what `dagster dev -w workspace.yaml` and the Kubernetes user deployment load.

Where things are:
- a batch enters in ``orchestration.domain.intake`` (`imgpipe upload` and the web app's upload page) and
  travels on the queue;
- ``sensors.batch_sensor`` turns each queue message into one run of ``process_batch``;
- ``assets.batch`` holds the four assets of that run; images change only in ``assets.core``;
- the outside services sit behind ``orchestration.ports`` with adapters in ``orchestration.adapters``,
  chosen (and created once per process) in ``orchestration.wiring``; ``orchestration.resources`` hands
  them to assets and sensors, configured only by ``orchestration.settings`` (never by run config).

Executor: ``in_process_executor``. A batch run is four short steps that hand data over through the lake;
the default multiprocess executor spends ~1.5 s starting a process per step (≈10 s per run against ≈5 s
measured on a 2-core box), while parallelism inside a step comes from the image worker pool. Under
Kubernetes the run itself gets its own pod (K8sRunLauncher) either way.
"""

from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from assets.analytics import bi_export_job, bi_export_schedule, image_facts_daily
from assets.batch import batch_asset_checks, batch_assets
from orchestration.resources import resources_from_settings
from orchestration.settings import check_profile, load_settings
from sensors.batch_sensor import build_batch_sensor, build_cancel_sensor, build_failure_sensor
from sensors.deletion_sensor import build_deletion_sensor
from sensors.events_sensor import build_events_sensor
from sensors.housekeeping import housekeeping_job, housekeeping_schedule
from sensors.reconcile_sensor import build_reconcile_sensor

process_batch_job = define_asset_job(
    name="process_batch",
    selection=AssetSelection.assets(*batch_assets),
    executor_def=in_process_executor,
    description="Process one batch (one dynamic partition): renditions, documents, Kafka events.",
)

settings = check_profile(load_settings())

defs = Definitions(
    assets=[*batch_assets, image_facts_daily],
    asset_checks=batch_asset_checks,
    jobs=[process_batch_job, housekeeping_job, bi_export_job],
    schedules=[housekeeping_schedule, bi_export_schedule],
    sensors=[build_batch_sensor(process_batch_job, settings=settings), build_failure_sensor(process_batch_job),
             build_cancel_sensor(process_batch_job),
             build_reconcile_sensor(settings=settings),
             build_deletion_sensor(settings=settings, asset_keys=[key for a in batch_assets for key in a.keys]),
             build_events_sensor(settings=settings)],
    resources=resources_from_settings(settings),
    # Backfills and UI materialisations run the implicit asset job: in one process too (see above).
    executor=in_process_executor,
)
