"""The code location loads, from workspace.yaml as `dagster dev -w workspace.yaml` loads it, and has the shape
the rest of the system relies on (a snapshot of the asset graph, as dagster-open-platform does)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, Definitions

ROOT = Path(__file__).resolve().parents[1]


def test_workspace_yaml_validates(tmp_path):
    env = {**os.environ, "IMGPIPE_DATA_DIR": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful for code location imgpipe" in proc.stdout + proc.stderr


def test_asset_graph_snapshot():
    from orchestration.definitions import defs

    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_images", "renditions", "labels", "moderation", "faces", "image_documents", "result_events",
                    "image_facts_daily"}
    parents = {k: {p.to_user_string() for p in graph.get(AssetKey(k)).parent_keys} for k in keys}
    assert parents == {
        "raw_images": set(),
        "renditions": {"raw_images"},
        "labels": {"renditions"}, "moderation": {"renditions"}, "faces": {"renditions"},
        "image_documents": {"renditions", "labels", "moderation", "faces"},
        "result_events": {"image_documents"},
        "image_facts_daily": set(),  # reads the store's documents of a day, not a batch partition
    }
    for key in keys - {"image_facts_daily"}:
        assert graph.get(AssetKey(key)).partitions_def.name == "batches"
    assert type(graph.get(AssetKey("image_facts_daily")).partitions_def).__name__ == "DailyPartitionsDefinition"
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {"renditions_exist_and_decode", "every_image_accounted_for", "labels_complete_and_in_range",
                      "moderation_complete_and_in_range", "faces_complete_and_in_range"}
    # The three understanding assets are one step that can run any subset (reprocess --asset labels).
    understand = graph.get(AssetKey("labels"))
    assert understand.is_executable and graph.get_execution_set_asset_and_check_keys(AssetKey("labels")) == {
        AssetKey("labels")}
    job = defs.resolve_job_def("process_batch")
    assert job.executor_def.name == "in_process"
    # Very large batches: the same assets, steps apart (locally processes; on AKS pods, tests/test_deploy.py).
    fanout = defs.resolve_job_def("process_batch_fanout")
    assert fanout.executor_def.name == "multiprocess_fanout"
    assert {k for k in fanout.asset_layer.selected_asset_keys} == {k for k in job.asset_layer.selected_asset_keys}
    assert {s.name for s in defs.sensors} == {"batch_sensor", "batch_failure_sensor", "intake_reconciler",
                                              "deletion_sensor", "events_sensor", "batch_cancel_sensor"}


def test_the_operators_dagster_has_no_telemetry_and_no_onboarding_prompt(tmp_path):
    """Issue 24, item 12 (in part): our instance config turns off Dagster's telemetry and its onboarding /
    newsletter prompt, on the local stack (dagster.yaml, loaded by a real instance) and on AKS (Helm values)."""
    import yaml
    from dagster import DagsterInstance

    from orchestration.devtools.dagster_home import prepare_dagster_home
    from orchestration.settings import load_settings
    from tests import deploycheck

    home = prepare_dagster_home(load_settings(data_dir=tmp_path))
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    assert config["telemetry"] == {"enabled": False} and config["nux"] == {"enabled": False}
    with DagsterInstance.from_config(str(home)) as instance:  # the config is one Dagster accepts
        assert instance.is_ephemeral is False
    values = deploycheck.load_values()
    assert values["telemetry"] == {"enabled": False}
    assert values["additionalInstanceConfig"]["nux"] == {"enabled": False}


def test_asset_kinds_say_the_active_profile_and_run_metadata_has_no_socket_paths():
    """Issue 24, item 12 (in part): on the local stack the UI shows the lake as files and the store as SQLite,
    not ADLS and Cosmos DB (the renditions' metadata without a socket path: tests/test_e2e.py)."""
    probe = ("from orchestration.definitions import defs; from dagster import AssetKey; g = defs.resolve_asset_graph(); "
             "print(sorted(g.get(AssetKey('renditions')).kinds), sorted(g.get(AssetKey('image_documents')).kinds), "
             "sorted(g.get(AssetKey('image_facts_daily')).kinds))")
    kinds = {}
    for profile, extra in (("local", {}), ("azure", {"IMGPIPE_STORAGE_ACCOUNT_URL": "https://a.blob.core.windows.net",
                                                     "IMGPIPE_COSMOS_ENDPOINT": "https://c.documents.azure.com:443/",
                                                     "IMGPIPE_SERVICEBUS_NAMESPACE": "n.servicebus.windows.net"})):
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGPIPE_")}
        out = subprocess.run([sys.executable, "-c", probe], env={**env, "IMGPIPE_PROFILE": profile, **extra},
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        kinds[profile] = out.stdout.strip().splitlines()[-1]
    assert kinds["local"] == "['file', 'pillow'] ['sqlite'] ['file', 'parquet']"
    assert kinds["azure"] == "['adls', 'pillow'] ['cosmosdb'] ['adls', 'parquet']"
