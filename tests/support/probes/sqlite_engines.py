"""Three materializations on an on-disk instance with the tuning's ``sqlite`` patch (the third after its run's
database was deleted). Prints: applied?, engines made by the first and the second, all succeeded, the latest
materialization is the third's, run records, the third has events."""

import os
import sys

from sqlalchemy.engine.base import Engine

from orchestration.devtools import dagster_tuning

ok_patch = dagster_tuning._sqlite()
made = []
original = Engine.__init__
Engine.__init__ = lambda self, *a, **k: (made.append(1), original(self, *a, **k))[1]

from dagster import AssetKey, DagsterInstance, asset, materialize  # noqa: E402


@asset
def numbers():
    return [1, 2, 3]


with DagsterInstance.from_config(sys.argv[1]) as instance:
    first = materialize([numbers], instance=instance)
    made_first = len(made)
    made.clear()
    second = materialize([numbers], instance=instance)
    made_second = len(made)
    os.remove(os.path.join(sys.argv[1], "history", "runs", second.run_id + ".db"))
    third = materialize([numbers], instance=instance)
    ok = all(r.success for r in (first, second, third))
    latest = instance.get_latest_materialization_event(AssetKey("numbers")).run_id
    records = len(instance.get_run_records())
    events = len(instance.all_logs(third.run_id))
print(ok_patch, made_first, made_second, ok, latest == third.run_id, records, events > 5)
