"""A stand-in run worker: records an event with its pid in the instance at argv[1] for run argv[2], as a real
one's step events do, then lives on for argv[3] seconds."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the checkout, for tests.support

from dagster import DagsterEvent, DagsterEventType, DagsterInstance  # noqa: E402

from tests.support.dagster_internals import EngineEventData  # noqa: E402

with DagsterInstance.from_config(sys.argv[1]) as inst:
    inst.report_dagster_event(DagsterEvent(event_type_value=DagsterEventType.ENGINE_EVENT.value,
                                           job_name="process_batch", message="run worker up",
                                           event_specific_data=EngineEventData(), pid=os.getpid()),
                              run_id=sys.argv[2])
print("ready", flush=True)
time.sleep(float(sys.argv[3]))
