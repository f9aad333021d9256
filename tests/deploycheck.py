"""Offline checks of the deployment (deploy/): what can be proven without a cluster or a subscription.

- ``helm_values``: our values merged over the official chart's the way Helm merges them;
- ``chart_schema_errors``: those values against the chart's values.schema.json (and the user-deployments
  subchart's), with the schema's remote Kubernetes references resolved to kubernetes-validate's bundled
  definitions;
- ``run_job``: the Kubernetes Job the real ``dagster_k8s.K8sRunLauncher`` creates for a batch run, with the
  launcher configured as the chart configures it from the values (instance ConfigMap template
  ``dagsterYaml.runLauncher.k8s``) and the code server's container context as the user-deployments chart
  passes it (``dagsterUserDeployments.k8sContainerContext``, only when includeConfigInLaunchedRuns is on);
- ``step_job``: the Job the real ``dagster_k8s`` step handler (k8s_job_executor) creates for a step of a
  fanned-out batch run, the executor configured as the code location configures it, on an instance whose run
  launcher is the chart's;
- ``k8s_errors``: kubernetes-validate --strict on any manifest.
Facts these rest on: ../shared/notes/deploy.md."""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "tests" / "data" / "dagster-chart" / "dagster"  # the official chart, copied (tests/data/README.md)
SUBCHART = CHART / "charts" / "dagster-user-deployments"
K8S_VERSION = "1.33.0"


def chart_available() -> bool:
    return (CHART / "values.schema.json").is_file()


def merge(base, over):
    """Helm's merge of a values file over the chart's: maps merge, lists and scalars replace, null deletes."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return copy.deepcopy(over)
    out = copy.deepcopy(base)
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_values(path: Path = ROOT / "deploy" / "helm" / "values.yaml") -> dict:
    return yaml.safe_load(path.read_text())


def helm_values(ours: dict) -> tuple[dict, dict]:
    """(the chart's computed values, the user-deployments subchart's) with ``ours`` merged over them."""
    top = merge(yaml.safe_load((CHART / "values.yaml").read_text()), ours)
    sub_defaults = yaml.safe_load((SUBCHART / "values.yaml").read_text())
    sub = merge(sub_defaults, {**(ours.get("dagster-user-deployments") or {}), "global": ours.get("global") or {}})
    return top, sub


@lru_cache(maxsize=1)
def _k8s_definitions() -> dict:
    import kubernetes_validate

    path = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local" / "_definitions.json"
    doc = json.loads(path.read_text())
    return {**doc, "definitions": doc.get("$defs", {})}


def _retrieve(uri: str) -> Resource:
    if uri.endswith("/_definitions.json") and "kubernetes-json-schema" in uri:
        return Resource.from_contents(_k8s_definitions(), default_specification=DRAFT202012)
    raise LookupError(f"no offline copy of {uri}")


def chart_schema_errors(values: dict, schema_path: Path) -> list[str]:
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema, registry=Registry(retrieve=_retrieve))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(values)]


class _CapturingBatchApi:
    def __init__(self):
        self.jobs: list[tuple[object, str]] = []

    def create_namespaced_job(self, body, namespace, **kwargs):
        self.jobs.append((body, namespace))
        return body


def _container_context(top: dict, sub: dict) -> dict | None:
    """What the user-deployments chart passes as DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT (or None)."""
    deployment = sub["deployments"][0]
    if not (deployment.get("includeConfigInLaunchedRuns") or {"enabled": True}).get("enabled", True):
        return None
    k8s = {
        "image_pull_policy": deployment["image"].get("pullPolicy"),
        "env_config_maps": [f"dagster-{deployment['name']}-user-env"]
        + [c["name"] for c in deployment.get("envConfigMaps") or [] if "name" in c],
        "namespace": "imgpipe",
        "service_account_name": (top.get("global") or {}).get("serviceAccountName") or "dagster-user-deployments-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in deployment["envSecrets"] if "name" in s]
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"),
                      ("resources", "resources")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    if deployment.get("nodeSelector"):
        k8s["run_k8s_config"]["pod_spec_config"]["node_selector"] = deployment["nodeSelector"]
    if deployment.get("tolerations"):
        k8s["run_k8s_config"]["pod_spec_config"]["tolerations"] = deployment["tolerations"]
    if deployment.get("podSecurityContext"):
        k8s["run_k8s_config"]["pod_spec_config"]["security_context"] = deployment["podSecurityContext"]
    return {"k8s": k8s}


def _snake(d):
    """runK8sConfig's camelCase section names → the launcher's snake_case keys (the chart template's map)."""
    names = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
             "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
             "jobMetadata": "job_metadata"}
    return {names[k]: v for k, v in (d or {}).items() if k in names}


def _kubeconfig(tmp_path: Path) -> str:
    tmp_path.mkdir(parents=True, exist_ok=True)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "x", "user": {"token": "unused"}}],
        "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    return str(kubeconfig)


def _launcher_config(top: dict, kubeconfig: str) -> dict:
    """The K8sRunLauncher's config as the chart's instance ConfigMap gives it (dagsterYaml.runLauncher.k8s)."""
    cfg = top["runLauncher"]["config"]["k8sRunLauncher"]
    global_ = top.get("global") or {}
    config = dict(
        service_account_name=global_.get("serviceAccountName") or top["serviceAccount"].get("name") or "dagster",
        instance_config_map="dagster-instance",
        postgres_password_secret=global_.get("postgresqlSecretName") or "dagster-postgresql-secret",
        dagster_home="/opt/dagster/dagster_home",
        image_pull_policy=cfg.get("imagePullPolicy"),
        load_incluster_config=False, kubeconfig_file=kubeconfig,
        job_namespace=cfg.get("jobNamespace") or "imgpipe",
        env_config_maps=[c["name"] for c in cfg.get("envConfigMaps") or []] or None,
        env_secrets=[s["name"] for s in cfg.get("envSecrets") or []] or None,
        env_vars=cfg.get("envVars") or None,
        volume_mounts=cfg.get("volumeMounts") or None, volumes=cfg.get("volumes") or None,
        labels=cfg.get("labels") or None, resources=cfg.get("resources") or None,
        security_context=cfg.get("securityContext") or None,
        run_k8s_config=_snake(cfg.get("runK8sConfig")) or None,
    )
    return {k: v for k, v in config.items() if v is not None}


def _origin(top: dict, sub: dict, job_name: str):
    from tests.support.dagster_internals import JobPythonOrigin, ModuleCodePointer, RepositoryPythonOrigin

    deployment = sub["deployments"][0]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    return JobPythonOrigin(
        job_name,
        RepositoryPythonOrigin(executable_path="/usr/local/bin/python",
                               code_pointer=ModuleCodePointer("orchestration.definitions", "defs", None),
                               container_image=image, container_context=_container_context(top, sub)),
    )


def _serialized(batch_api: _CapturingBatchApi) -> dict:
    from kubernetes.client import ApiClient

    [(body, namespace)] = batch_api.jobs
    job = ApiClient().sanitize_for_serialization(body)
    job.setdefault("apiVersion", "batch/v1")
    job.setdefault("kind", "Job")
    job["metadata"]["namespace"] = namespace
    return job


def run_job(ours: dict, tmp_path: Path, *, tags: dict | None = None) -> dict:
    """The Job (as the API server would receive it, JSON-ready) that the real K8sRunLauncher makes for a
    batch run under these values."""
    from dagster import instance_for_test

    from tests.support.dagster_internals import LaunchRunContext, create_run_for_test
    from dagster_k8s import K8sRunLauncher

    top, sub = helm_values(ours)
    batch_api = _CapturingBatchApi()
    launcher = K8sRunLauncher(**_launcher_config(top, _kubeconfig(tmp_path)), k8s_client_batch_api=batch_api)
    (tmp_path / "home").mkdir(exist_ok=True)
    with instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        launcher.register_instance(instance)
        run = create_run_for_test(instance, job_name="process_batch", job_code_origin=_origin(top, sub, "process_batch"),
                                  tags={"imgpipe/user_id": "u-abc", "dagster/partition": "b-1", **(tags or {})})
        launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))
    return _serialized(batch_api)


def step_job(ours: dict, tmp_path: Path, settings, *, step: str = "renditions.render_chunk[c0000]") -> dict:
    """The Job (JSON-ready) that the real k8s_job_executor's step handler makes for one step of a fanned-out
    batch run (``process_batch_fanout`` with IMGPIPE_RUN_LAUNCHER=k8s; by default its first chunk): the
    executor configured as ``orchestration.definitions.fanout_executor`` configures it from ``settings``, on an
    instance whose run launcher is the chart's (its runK8sConfig reaches step pods too)."""
    from dagster import AssetSelection, Definitions, define_asset_job, instance_for_test

    from assets.batch import batch_asset_checks, batch_assets
    from orchestration.definitions import fanout_executor
    from orchestration.resources import resources_from_settings
    from tests.support.dagster_internals import create_run_for_test, step_handler_context

    top, sub = helm_values(ours)
    job_def = Definitions(
        assets=batch_assets, asset_checks=batch_asset_checks,
        jobs=[define_asset_job("process_batch_fanout", selection=AssetSelection.assets(*batch_assets),
                               executor_def=fanout_executor(settings))],
        resources=resources_from_settings(settings)).resolve_job_def("process_batch_fanout")
    launcher = {"module": "dagster_k8s", "class": "K8sRunLauncher",
                "config": _launcher_config(top, _kubeconfig(tmp_path))}
    (tmp_path / "home").mkdir(exist_ok=True)
    batch_api = _CapturingBatchApi()
    with instance_for_test(temp_dir=str(tmp_path / "home"), overrides={"run_launcher": launcher}) as instance:
        run = create_run_for_test(instance, job_name="process_batch_fanout",
                                  job_code_origin=_origin(top, sub, "process_batch_fanout"),
                                  tags={"imgpipe/user_id": "u-abc", "dagster/partition": "b-1"})
        handler, context = step_handler_context(job_def, run, instance, step, batch_api,
                                                dynamic_mappings={"renditions.plan_chunks": {"result": ["c0000"]}})
        list(handler.launch_step(context))
    return _serialized(batch_api)


def k8s_errors(manifest: dict) -> list[str]:
    """kubernetes-validate --strict (unknown fields are errors) for Kubernetes ``K8S_VERSION``."""
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    try:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    except ValidationError as exc:
        return [f"{manifest.get('kind')} {manifest.get('metadata', {}).get('name')}: "
                f"{'/'.join(map(str, exc.path))}: {exc.message[:300]}"]
    return []


def secret_literals(obj, names=("PASSWORD", "SECRET", "KEY", "TOKEN", "CONNECTION_STRING")) -> list[str]:
    """Environment variables whose name looks secret and whose value is written out (not a reference)."""
    found = []
    if isinstance(obj, dict):
        if "name" in obj and "value" in obj and any(n in str(obj["name"]).upper() for n in names):
            found.append(str(obj["name"]))
        for v in obj.values():
            found += secret_literals(v, names)
    elif isinstance(obj, list):
        for v in obj:
            found += secret_literals(v, names)
    return found
