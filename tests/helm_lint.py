"""`helm lint` of the official Dagster chart with our values, through helm-sdkpy (the Helm v4 library;
needs Python >= 3.12, so tests/test_deploy.py runs this file with that interpreter):

    python3.12 tests/helm_lint.py CHART_DIR MERGED_VALUES_YAML K8S_DEFINITIONS_JSON

The chart copy's values.schema.json points at Kubernetes definitions on GitHub; they are rewritten to a
local copy (no network here). Prints the lint result as JSON; exit 1 when it has errors."""
import asyncio
import json
import pathlib
import shutil
import sys
import tempfile

import helm_sdkpy
chart_src, values_file, defs_file = sys.argv[1], sys.argv[2], sys.argv[3]
URL = "https://raw.githubusercontent.com/yannh/kubernetes-json-schema/master/v1.19.0/_definitions.json"
with tempfile.TemporaryDirectory() as t:
    chart = pathlib.Path(t) / "dagster"
    shutil.copytree(chart_src, chart)
    shutil.copy(values_file, chart / "values.yaml")
    local = pathlib.Path(t) / "k8s_definitions.json"
    shutil.copy(defs_file, local)
    for schema in chart.rglob("values.schema.json"):
        schema.write_text(schema.read_text().replace(URL, local.as_uri()))
    lint = helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace="imgpipe"))
    result = asyncio.run(lint.run(str(chart)))
    print(json.dumps(result, default=str)[:3000])
    sys.exit(1 if (result or {}).get("Errors") else 0)
