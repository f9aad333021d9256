"""Imports the modules named on the command line and prints, as JSON, the Dagster packages that came with them."""

import importlib
import json
import sys

for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("dagster", "dagster_k8s", "dagster_azure"))))
