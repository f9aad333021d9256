"""process_batch_fanout as a run process builds it (tests/test_fanout.py): a module of its own, so that the
multiprocess executor's step processes import it by name (``reconstructable``)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import Definitions

from assets.batch import batch_asset_checks, batch_assets
from orchestration import wiring
from orchestration.resources import resources_from_settings
from orchestration.settings import load_settings

FAIL_ONCE, FAIL_ALWAYS, MARKS = "FANOUT_TEST_FAIL_ONCE", "FANOUT_TEST_FAIL_ALWAYS", "FANOUT_TEST_MARKS"


class _FailingRenditions:
    """The real lake, except that storing a rendition of the image named in FAIL_ONCE fails the first time (a
    mark file remembers it across processes) and of the one in FAIL_ALWAYS every time."""

    def __init__(self, lake):
        self._lake = lake

    def write(self, path, data, **kwargs):
        image = path.split("/")[2] if path.count("/") == 3 else None
        mark = Path(os.environ[MARKS]) / f"{image}.failed"
        if image and image == os.environ.get(FAIL_ONCE) and not mark.exists():
            mark.touch()
            raise OSError(f"storage unavailable writing {path} (once)")
        if image and image == os.environ.get(FAIL_ALWAYS):
            raise OSError(f"storage unavailable writing {path}")
        return self._lake.write(path, data, **kwargs)

    def __getattr__(self, name):
        return getattr(self._lake, name)


def fanout_job():
    """process_batch_fanout with the resources of the environment's settings (and the failing lake when asked)."""
    from orchestration.definitions import process_batch_fanout_job

    settings = load_settings()
    resources = resources_from_settings(settings)
    if os.environ.get(FAIL_ONCE) or os.environ.get(FAIL_ALWAYS):
        resources["lake"] = _FailingRenditions(wiring.CLIENTS.lake(settings))
    defs = Definitions(assets=batch_assets, asset_checks=batch_asset_checks, jobs=[process_batch_fanout_job],
                       resources=resources)
    return defs.resolve_job_def("process_batch_fanout")


