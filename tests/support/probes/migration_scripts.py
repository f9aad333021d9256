"""How many of Dagster's migration scripts alembic reads to open the SQLite storage: the first time, then
(after the tuning's ``sqlite`` patch and one more opening, which reads them once) three more times.
Prints: applied?, reads of the first opening, reads of the last three."""

import sys

from alembic.script import base
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage

from orchestration.devtools import dagster_tuning

reads = []
original = base.Script._from_path
base.Script._from_path = classmethod(lambda cls, *a, **k: (reads.append(1), original.__func__(cls, *a, **k))[1])
DagsterSqliteStorage.from_local(sys.argv[1]).dispose()
before = len(reads)
ok = dagster_tuning._sqlite()
DagsterSqliteStorage.from_local(sys.argv[1]).dispose()
reads.clear()
for _ in range(3):
    DagsterSqliteStorage.from_local(sys.argv[1]).dispose()
print(ok, before, len(reads))
