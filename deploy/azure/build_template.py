"""Writes deploy/azure/azuredeploy.json, the ARM template of imgpipe's Azure resources.

    python deploy/azure/build_template.py          # rewrite azuredeploy.json
    python deploy/azure/build_template.py --check  # exit 1 if azuredeploy.json is not what this writes

Generated, not hand-written, so that what must agree with the code does: the lake's lifecycle policy comes
from orchestration/domain/lifecycle_rules.json (the same rules the local housekeeping schedule applies),
the Cosmos DB containers' partition keys from the MetadataStore port, the Service Bus queue's lock,
delivery count and duplicate window from Settings' defaults; the image understanding accounts (Azure AI Vision,
Azure AI Content Safety) are Entra ID only, as the Azure adapter (orchestration/adapters/azure/understanding.py)
signs in: DefaultAzureCredential, never a key; so is Event Hubs (local auth off, no access rule: the Kafka
adapter signs in with Entra ID tokens, IMGPIPE_KAFKA_SECURITY=eventhubs). tests/test_deploy.py checks the file is
current, validates every resource against Azure's published schemas and runs checkov on it.

One function per Azure resource or tight group of resources (storage_account(), lake_filesystem(),
cosmos_containers(), servicebus(), understanding_accounts(), aks(), role_assignments(), ...) returns its resource(s); parameters(),
variables() and outputs() the other sections; template() assembles them (its list is the order of the
resources in azuredeploy.json).

Deploy:  az deployment group create -g <rg> -f deploy/azure/azuredeploy.json -p namePrefix=imgpipe \
             -p postgresAdminPassword=<from your vault>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from orchestration.domain.lifecycle import azure_management_policy  # noqa: E402
from orchestration.ports.metadata import PARTITION_KEYS  # noqa: E402
from orchestration.settings import Settings  # noqa: E402

OUT = Path(__file__).with_name("azuredeploy.json")

API = {
    "insights": "2025-02-01", "identity": "2024-11-30", "storage": "2025-06-01", "cosmos": "2025-10-15",
    "servicebus": "2024-01-01", "eventgrid": "2025-02-15", "eventhub": "2024-01-01", "acr": "2025-04-01",
    "aks": "2025-10-01", "postgres": "2025-08-01", "roles": "2022-04-01", "cognitive": "2024-10-01",
}
# Built-in role definition ids (Azure RBAC).
ROLES = {
    "Storage Blob Data Contributor": "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
    "Storage Queue Data Message Processor": "8a0f0c08-91a1-4084-bc3d-661d67233fed",
    "Storage Queue Data Message Sender": "c6a89b2d-59bc-44d0-9896-0f6e12d7b80a",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Azure Service Bus Data Receiver": "4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0",
    "Azure Event Hubs Data Sender": "2b629674-e913-4c01-ae53-ef4638d8f975",
    "Azure Event Hubs Data Receiver": "a638d3c7-ab3a-418d-83e6-5f17a39d4fde",
    "AcrPull": "7f951dda-4ed3-4680-a7ca-43fe172d538d",
    "Cognitive Services User": "a97b65f3-24c7-4388-baec-2e87be9e9f1d",
}
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"  # Cosmos DB Built-in Data Contributor
SERVICE_ACCOUNTS = {"dagster": "imgpipe-dagster", "web": "imgpipe-web"}  # deploy/helm, deploy/k8s
CONTAINER = "lake"
SIGNAL_QUEUE = "batch-signals"
BATCH_QUEUE = "batches"
RESULTS_HUB = "imgpipe.results"
SB_EVENTS = ["Microsoft.ServiceBus.ActiveMessagesAvailableWithNoListeners",
             "Microsoft.ServiceBus.ActiveMessagesAvailablePeriodicNotifications"]



# The batch queue's largest message (Premium: up to 100 MB): room for a manifest of the most images a batch may
# have (BatchManifest's limit, 10,000) with their longest names.
QUEUE_MAX_MESSAGE_KB = 10240

def p(name: str) -> str:
    return f"[parameters('{name}')]"


def v(name: str) -> str:
    return f"[variables('{name}')]"


def rid(*parts: str) -> str:
    """A resourceId() expression: rid("Microsoft.Storage/storageAccounts", "variables('storage')")."""
    return f"resourceId('{parts[0]}', {', '.join(parts[1:])})"


def role_assignment(key: str, role: str, principal: str, scope: str, depends: list[str],
                    principal_type: str = "ServicePrincipal") -> dict:
    return {
        "type": "Microsoft.Authorization/roleAssignments", "apiVersion": API["roles"],
        "name": f"[guid({scope}, '{key}', '{ROLES[role]}')]",
        "scope": f"[{scope}]",
        "dependsOn": depends,
        "properties": {
            "roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '{ROLES[role]}')]",
            "principalId": principal,
            "principalType": principal_type,
            "description": f"imgpipe: {role} ({key})",
        },
    }


# resourceId() expressions and role assignment scopes that resources refer to.
STORAGE_ID = rid("Microsoft.Storage/storageAccounts", "variables('storage')")
COSMOS_ID = rid("Microsoft.DocumentDB/databaseAccounts", "variables('cosmos')")
SERVICE_BUS_ID = rid("Microsoft.ServiceBus/namespaces", "variables('serviceBus')")
EVENT_HUBS_ID = rid("Microsoft.EventHub/namespaces", "variables('eventHubs')")
VISION_ID = rid("Microsoft.CognitiveServices/accounts", "variables('vision')")
CONTENT_SAFETY_ID = rid("Microsoft.CognitiveServices/accounts", "variables('contentSafety')")
AKS_ID = rid("Microsoft.ContainerService/managedClusters", "variables('aks')")
IDENTITY_ID = rid("Microsoft.ManagedIdentity/userAssignedIdentities", "variables('identity')")
# The workload identity's principal: what the app's pods act as (role assignments, Cosmos DB data plane).
APP_PRINCIPAL = f"[reference({IDENTITY_ID}, '{API['identity']}').principalId]"
LAKE_SCOPE = f"format('Microsoft.Storage/storageAccounts/{{0}}/blobServices/default/containers/{CONTAINER}', variables('storage'))"
SIGNAL_QUEUE_SCOPE = f"format('Microsoft.Storage/storageAccounts/{{0}}/queueServices/default/queues/{SIGNAL_QUEUE}', variables('storage'))"
BATCH_QUEUE_SCOPE = f"format('Microsoft.ServiceBus/namespaces/{{0}}/queues/{BATCH_QUEUE}', variables('serviceBus'))"
RESULTS_HUB_SCOPE = f"format('Microsoft.EventHub/namespaces/{{0}}/eventhubs/{RESULTS_HUB}', variables('eventHubs'))"
ACR_SCOPE = "format('Microsoft.ContainerRegistry/registries/{0}', variables('acr'))"
VISION_SCOPE = "format('Microsoft.CognitiveServices/accounts/{0}', variables('vision'))"
CONTENT_SAFETY_SCOPE = "format('Microsoft.CognitiveServices/accounts/{0}', variables('contentSafety'))"


# -- template sections --------------------------------------------------------------------------------


def parameters(s: Settings) -> dict:
    return {
        "namePrefix": {"type": "string", "defaultValue": "imgpipe", "minLength": 3, "maxLength": 11,
                       "metadata": {"description": "Lower-case letters and digits; prefixes every resource name."}},
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
        "softDeleteDays": {"type": "int", "defaultValue": int(s.lake_soft_delete_days), "minValue": 1, "maxValue": 365,
                           "metadata": {"description": "Blob and container soft delete (= the restore period of a deleted batch)."}},
        "storageSku": {"type": "string", "defaultValue": "Standard_GZRS", "allowedValues": ["Standard_ZRS", "Standard_GZRS", "Standard_RAGZRS"]},
        "cosmosMaxThroughput": {"type": "int", "defaultValue": 1000, "minValue": 1000},
        "eventHubPartitions": {"type": "int", "defaultValue": 8, "minValue": 1, "maxValue": 32},
        "kubernetesVersion": {"type": "string", "defaultValue": "1.33"},
        "kubernetesNamespace": {"type": "string", "defaultValue": "imgpipe"},
        # "d" sizes have the local disk ephemeral OS disks need.
        "systemPoolVmSize": {"type": "string", "defaultValue": "Standard_D2ds_v5"},
        "runPoolVmSize": {"type": "string", "defaultValue": "Standard_D4ds_v5",
                          "metadata": {"description": "4 vCPU / 16 GiB: two 2-CPU run pods per node."}},
        "apiServerAuthorizedIpRanges": {"type": "array", "defaultValue": ["0.0.0.0/32"],
                                        "metadata": {"description": "CIDRs allowed to reach the Kubernetes API (your operators' and CI's); the default allows none until set."}},
        "runPoolMaxNodes": {"type": "int", "defaultValue": 10, "minValue": 1, "maxValue": 100},
        # Image understanding (IMGPIPE_UNDERSTANDING=azure). Image Analysis 4.0 is not in every region, and its
        # Caption feature (the adapter asks for it with the tags) is in fewer still.
        "visionLocation": {"type": "string", "defaultValue": "[parameters('location')]",
                           "metadata": {"description": "Azure AI Vision's region: a region with Image Analysis 4.0 "
                                                       "and, for captions, its Caption feature (eastus, "
                                                       "westus, westeurope, northeurope, francecentral, koreacentral, "
                                                       "southeastasia, eastasia). Defaults to location (the resource group's)."}},
        "visionSku": {"type": "string", "defaultValue": "S1", "allowedValues": ["F0", "S1"],
                      "metadata": {"description": "F0: free, rate-limited, one per subscription; S1: standard."}},
        "contentSafetyLocation": {"type": "string", "defaultValue": "[parameters('visionLocation')]",
                                  "metadata": {"description": "Azure AI Content Safety's region (one with image analysis, "
                                                              "e.g. eastus, westeurope); defaults to visionLocation."}},
        "contentSafetySku": {"type": "string", "defaultValue": "S0", "allowedValues": ["F0", "S0"],
                             "metadata": {"description": "F0: free, rate-limited, one per subscription; S0: standard."}},
        "postgresAdminLogin": {"type": "string", "defaultValue": "dagsteradmin"},
        "postgresAdminPassword": {"type": "securestring", "minLength": 16,
                                  "metadata": {"description": "From your vault; also the Kubernetes Secret dagster-postgresql-secret."}},
    }


def variables() -> dict:
    """Resource names."""
    return {
        "suffix": "[uniqueString(resourceGroup().id)]",
        # namePrefix (≤ 11 lower-case letters/digits) + 13 = a valid storage account name (≤ 24).
        "storage": "[format('{0}{1}', parameters('namePrefix'), variables('suffix'))]",
        "cosmos": "[format('{0}-meta-{1}', parameters('namePrefix'), variables('suffix'))]",
        "serviceBus": "[format('{0}-sb-{1}', parameters('namePrefix'), variables('suffix'))]",
        "systemTopic": "[format('{0}-sb-events', parameters('namePrefix'))]",
        "eventHubs": "[format('{0}-eh-{1}', parameters('namePrefix'), variables('suffix'))]",
        "acr": "[format('{0}acr{1}', parameters('namePrefix'), variables('suffix'))]",
        "aks": "[format('{0}-aks', parameters('namePrefix'))]",
        "logs": "[format('{0}-logs', parameters('namePrefix'))]",
        "identity": "[format('{0}-workload', parameters('namePrefix'))]",
        "postgres": "[format('{0}-pg-{1}', parameters('namePrefix'), variables('suffix'))]",
        # Also the accounts' custom subdomains (<name>.cognitiveservices.azure.com: Entra ID tokens need one),
        # which are global: hence the suffix.
        "vision": "[format('{0}-vision-{1}', parameters('namePrefix'), variables('suffix'))]",
        "contentSafety": "[format('{0}-safety-{1}', parameters('namePrefix'), variables('suffix'))]",
    }


def outputs() -> dict:
    return {
        "storageBlobEndpoint": {"type": "string", "value": f"[reference({STORAGE_ID}, '{API['storage']}').primaryEndpoints.blob]"},
        "cosmosEndpoint": {"type": "string", "value": f"[reference({COSMOS_ID}, '{API['cosmos']}').documentEndpoint]"},
        "serviceBusHost": {"type": "string", "value": "[format('{0}.servicebus.windows.net', variables('serviceBus'))]"},
        # IMGPIPE_EVENTHUBS_NAMESPACE: the Kafka endpoint is <host>:9093; access is Entra ID only (no keys).
        "eventHubsHost": {"type": "string", "value": "[format('{0}.servicebus.windows.net', variables('eventHubs'))]"},
        "identityClientId": {"type": "string", "value": f"[reference({IDENTITY_ID}, '{API['identity']}').clientId]"},
        "tenantId": {"type": "string", "value": "[subscription().tenantId]"},
        "acrLoginServer": {"type": "string", "value": f"[reference(resourceId('Microsoft.ContainerRegistry/registries', variables('acr')), '{API['acr']}').loginServer]"},
        "aksName": {"type": "string", "value": v("aks")},
        "oidcIssuerUrl": {"type": "string", "value": f"[reference({AKS_ID}, '{API['aks']}').oidcIssuerProfile.issuerURL]"},
        "postgresHost": {"type": "string", "value": f"[reference(resourceId('Microsoft.DBforPostgreSQL/flexibleServers', variables('postgres')), '{API['postgres']}').fullyQualifiedDomainName]"},
        # IMGPIPE_VISION_ENDPOINT and IMGPIPE_CONTENT_SAFETY_ENDPOINT: endpoints only (local auth is off; no keys).
        "visionEndpoint": {"type": "string", "value": f"[reference({VISION_ID}, '{API['cognitive']}').endpoint]"},
        "contentSafetyEndpoint": {"type": "string", "value": f"[reference({CONTENT_SAFETY_ID}, '{API['cognitive']}').endpoint]"},
    }


# -- resources, in the template's order -----------------------------------------------------------------


def log_workspace() -> dict:
    return {
        "type": "Microsoft.OperationalInsights/workspaces", "apiVersion": API["insights"],
        "name": v("logs"), "location": p("location"),
        "properties": {"sku": {"name": "PerGB2018"}, "retentionInDays": 30},
    }


def workload_identity() -> dict:
    return {
        "type": "Microsoft.ManagedIdentity/userAssignedIdentities", "apiVersion": API["identity"],
        "name": v("identity"), "location": p("location"), "properties": {},
    }


def storage_account() -> dict:
    """The lake: ADLS Gen2 (hierarchical namespace), Entra ID only."""
    return {
        "type": "Microsoft.Storage/storageAccounts", "apiVersion": API["storage"],
        "name": v("storage"), "location": p("location"),
        "metadata": {"checkov": [
            "CKV_AZURE_59: AKS pods, Event Grid and BI tools reach the lake over its public endpoint with "
            "Entra ID only (no shared key, no anonymous access); private endpoints need the platform's VNet design",
            "CKV_AZURE_35: same reason: access is restricted by identity and RBAC on the container, not by network",
            "CKV_AZURE_43: the name is an expression checkov cannot evaluate: namePrefix (<= 11 lower-case "
            "letters/digits) + uniqueString (13) is a valid name of <= 24 characters",
        ]},
        "kind": "StorageV2", "sku": {"name": p("storageSku")},
        "properties": {
            "isHnsEnabled": True, "minimumTlsVersion": "TLS1_2", "supportsHttpsTrafficOnly": True,
            "allowBlobPublicAccess": False, "allowSharedKeyAccess": False,
            "defaultToOAuthAuthentication": True, "allowCrossTenantReplication": False,
            "publicNetworkAccess": "Enabled",
            "networkAcls": {"defaultAction": "Allow", "bypass": "AzureServices"},
            "encryption": {"keySource": "Microsoft.Storage", "requireInfrastructureEncryption": True,
                           "services": {"blob": {"enabled": True}, "queue": {"enabled": True, "keyType": "Account"}}},
        },
    }


def lake_filesystem() -> list[dict]:
    """The blob service (soft delete) and the lake's container."""
    return [
        {
            "type": "Microsoft.Storage/storageAccounts/blobServices", "apiVersion": API["storage"],
            "name": "[format('{0}/default', variables('storage'))]",
            "dependsOn": [f"[{STORAGE_ID}]"],
            "properties": {
                "deleteRetentionPolicy": {"enabled": True, "days": p("softDeleteDays")},
                "containerDeleteRetentionPolicy": {"enabled": True, "days": p("softDeleteDays")},
            },
        },
        {
            "type": "Microsoft.Storage/storageAccounts/blobServices/containers", "apiVersion": API["storage"],
            "name": f"[format('{{0}}/default/{CONTAINER}', variables('storage'))]",
            "dependsOn": ["[resourceId('Microsoft.Storage/storageAccounts/blobServices', variables('storage'), 'default')]"],
            "properties": {"publicAccess": "None"},
        },
    ]


def signal_queue() -> list[dict]:
    """The queue service and the Storage queue Event Grid signals into."""
    return [
        {
            "type": "Microsoft.Storage/storageAccounts/queueServices", "apiVersion": API["storage"],
            "name": "[format('{0}/default', variables('storage'))]",
            "dependsOn": [f"[{STORAGE_ID}]"],
            "properties": {},
        },
        {
            "type": "Microsoft.Storage/storageAccounts/queueServices/queues", "apiVersion": API["storage"],
            "name": f"[format('{{0}}/default/{SIGNAL_QUEUE}', variables('storage'))]",
            "dependsOn": ["[resourceId('Microsoft.Storage/storageAccounts/queueServices', variables('storage'), 'default')]"],
            "properties": {},
        },
    ]


def lifecycle_policy() -> dict:
    """From orchestration/domain/lifecycle_rules.json (with soft delete on, these are soft deletes)."""
    return {
        "type": "Microsoft.Storage/storageAccounts/managementPolicies", "apiVersion": API["storage"],
        "name": "[format('{0}/default', variables('storage'))]",
        "dependsOn": [f"[{STORAGE_ID}]"],
        "properties": {"policy": azure_management_policy(CONTAINER)},
    }


def cosmos_account() -> list[dict]:
    """Metadata: Cosmos DB for NoSQL, keys off (data-plane RBAC), and its database."""
    return [
        {
            "type": "Microsoft.DocumentDB/databaseAccounts", "apiVersion": API["cosmos"],
            "name": v("cosmos"), "location": p("location"), "kind": "GlobalDocumentDB",
            "metadata": {"checkov": [
                "CKV_AZURE_101: reached from AKS and BI tools over its public endpoint with Entra ID only "
                "(disableLocalAuth); private endpoints need the platform's VNet design, outside this template",
                "CKV_AZURE_99: same reason: access is restricted by identity (data-plane RBAC), not by IP",
            ]},
            "properties": {
                "databaseAccountOfferType": "Standard",
                "locations": [{"locationName": p("location"), "failoverPriority": 0, "isZoneRedundant": False}],
                "consistencyPolicy": {"defaultConsistencyLevel": "Session"},
                "disableLocalAuth": True, "disableKeyBasedMetadataWriteAccess": True,
                "minimalTlsVersion": "Tls12", "publicNetworkAccess": "Enabled",
                "backupPolicy": {"type": "Continuous", "continuousModeProperties": {"tier": "Continuous7Days"}},
            },
        },
        {
            "type": "Microsoft.DocumentDB/databaseAccounts/sqlDatabases", "apiVersion": API["cosmos"],
            "name": "[format('{0}/imgpipe', variables('cosmos'))]",
            "dependsOn": [f"[{COSMOS_ID}]"],
            "properties": {"resource": {"id": "imgpipe"}},
        },
    ]


def cosmos_containers() -> list[dict]:
    """One container per MetadataStore collection, partitioned as the port says."""
    containers = []
    for name, key in PARTITION_KEYS.items():
        # Indexed: the fields the adapter filters and sorts on (equality filters, ORDER BY created_at);
        # everything else is not indexed, which keeps writes cheap.
        # (The sensors' filters: cleanup_pending, the deletion sensor; events_pending, the events sensor. Quotas
        # are only read by id.)
        paths = {"batches": ["/user_id/?", "/batch_id/?", "/status/?", "/created_at/?", "/cleanup_pending/?",
                             "/events_pending/?"],
                 "images": ["/batch_id/?", "/user_id/?", "/outcome/?", "/processed_day/?", "/image_id/?"],
                 "quotas": ["/user_id/?"]}[name]
        containers.append({
            "type": "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers", "apiVersion": API["cosmos"],
            "name": f"[format('{{0}}/imgpipe/{name}', variables('cosmos'))]",
            "dependsOn": ["[resourceId('Microsoft.DocumentDB/databaseAccounts/sqlDatabases', variables('cosmos'), 'imgpipe')]"],
            "properties": {
                "resource": {
                    "id": name,
                    "partitionKey": {"paths": [f"/{key}"], "kind": "Hash", "version": 2},
                    # -1: items live until they carry a positive ttl (a deleted batch's documents).
                    "defaultTtl": -1,
                    "indexingPolicy": {
                        "indexingMode": "consistent", "automatic": True,
                        "includedPaths": [{"path": path} for path in paths],
                        "excludedPaths": [{"path": "/*"}, {"path": '/"_etag"/?'}],
                    },
                },
                "options": {"autoscaleSettings": {"maxThroughput": p("cosmosMaxThroughput")}},
            },
        })
    return containers


def cosmos_data_role() -> dict:
    """The workload identity's data-plane role on the Cosmos DB account (Built-in Data Contributor)."""
    return {
        "type": "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments", "apiVersion": API["cosmos"],
        "name": f"[format('{{0}}/{{1}}', variables('cosmos'), guid({COSMOS_ID}, variables('identity'), 'data-contributor'))]",
        "dependsOn": [f"[{COSMOS_ID}]", f"[{IDENTITY_ID}]"],
        "properties": {
            "roleDefinitionId": f"[resourceId('Microsoft.DocumentDB/databaseAccounts/sqlRoleDefinitions', variables('cosmos'), '{COSMOS_DATA_CONTRIBUTOR}')]",
            "principalId": APP_PRINCIPAL,
            "scope": f"[{COSMOS_ID}]",
        },
    }


def servicebus(s: Settings) -> list[dict]:
    """The batch queue: Service Bus Premium (the tier that emits Event Grid events), settings from Settings."""
    return [
        {
            "type": "Microsoft.ServiceBus/namespaces", "apiVersion": API["servicebus"],
            "name": v("serviceBus"), "location": p("location"),
            "sku": {"name": "Premium", "tier": "Premium", "capacity": 1},
            "properties": {"disableLocalAuth": True, "minimumTlsVersion": "1.2", "publicNetworkAccess": "Enabled"},
        },
        {
            "type": "Microsoft.ServiceBus/namespaces/queues", "apiVersion": API["servicebus"],
            "name": f"[format('{{0}}/{BATCH_QUEUE}', variables('serviceBus'))]",
            "dependsOn": [f"[{SERVICE_BUS_ID}]"],
            "properties": {
                "lockDuration": f"PT{int(s.queue_lock_seconds)}S",
                "maxDeliveryCount": s.queue_max_delivery_count,
                "requiresDuplicateDetection": True,
                "duplicateDetectionHistoryTimeWindow": f"PT{int(s.queue_duplicate_window_seconds)}S",
                "deadLetteringOnMessageExpiration": True,
                "defaultMessageTimeToLive": "P14D",
                "maxSizeInMegabytes": 5120,
                # A batch's manifest is one message: 10,000 images are about 2.5 MB, over Premium's 1 MB default.
                "maxMessageSizeInKilobytes": QUEUE_MAX_MESSAGE_KB,
            },
        },
    ]


def eventgrid_topic() -> dict:
    """Event Grid's system topic on the Service Bus namespace, with its own identity."""
    return {
        "type": "Microsoft.EventGrid/systemTopics", "apiVersion": API["eventgrid"],
        "name": v("systemTopic"), "location": p("location"),
        "identity": {"type": "SystemAssigned"},
        "dependsOn": [f"[{SERVICE_BUS_ID}]"],
        "properties": {"source": f"[{SERVICE_BUS_ID}]", "topicType": "Microsoft.ServiceBus.Namespaces"},
    }


def eventgrid_subscription() -> dict:
    """Service Bus "messages waiting, nobody listening" → the signal Storage queue."""
    return {
        "type": "Microsoft.EventGrid/systemTopics/eventSubscriptions", "apiVersion": API["eventgrid"],
        "name": "[format('{0}/batch-signals', variables('systemTopic'))]",
        "dependsOn": [
            "[resourceId('Microsoft.EventGrid/systemTopics', variables('systemTopic'))]",
            f"[resourceId('Microsoft.Storage/storageAccounts/queueServices/queues', variables('storage'), 'default', '{SIGNAL_QUEUE}')]",
            f"[extensionResourceId({SIGNAL_QUEUE_SCOPE}, 'Microsoft.Authorization/roleAssignments', guid({SIGNAL_QUEUE_SCOPE}, 'eventgrid', '{ROLES['Storage Queue Data Message Sender']}'))]",
        ],
        "properties": {
            # Delivered with the topic's own identity (the account allows no shared key).
            "deliveryWithResourceIdentity": {
                "identity": {"type": "SystemAssigned"},
                "destination": {"endpointType": "StorageQueue", "properties": {
                    "resourceId": f"[{STORAGE_ID}]", "queueName": SIGNAL_QUEUE,
                    "queueMessageTimeToLiveInSeconds": 604800}},
            },
            "filter": {"includedEventTypes": SB_EVENTS},
            "eventDeliverySchema": "EventGridSchema",
            "retryPolicy": {"maxDeliveryAttempts": 30, "eventTimeToLiveInMinutes": 1440},
        },
    }


def event_hubs() -> list[dict]:
    """Results: Event Hubs Standard (the Kafka endpoint) and the results hub. Entra ID only: local (SAS) auth
    is off and there is no access rule; the workload identity is Data Sender and Data Receiver on the hub
    (role_assignments()), and the Kafka adapter signs in with OAUTHBEARER tokens (IMGPIPE_KAFKA_SECURITY=eventhubs)."""
    return [
        {
            "type": "Microsoft.EventHub/namespaces", "apiVersion": API["eventhub"],
            "name": v("eventHubs"), "location": p("location"),
            "sku": {"name": "Standard", "tier": "Standard", "capacity": 1},
            "properties": {
                "kafkaEnabled": True, "minimumTlsVersion": "1.2", "publicNetworkAccess": "Enabled",
                "disableLocalAuth": True,
            },
        },
        {
            "type": "Microsoft.EventHub/namespaces/eventhubs", "apiVersion": API["eventhub"],
            "name": f"[format('{{0}}/{RESULTS_HUB}', variables('eventHubs'))]",
            "dependsOn": [f"[{EVENT_HUBS_ID}]"],
            "properties": {"partitionCount": p("eventHubPartitions"),
                           "retentionDescription": {"cleanupPolicy": "Delete", "retentionTimeInHours": 24}},
        },
    ]


def understanding_accounts() -> list[dict]:
    """Image understanding (IMGPIPE_UNDERSTANDING=azure): Azure AI Vision (Image Analysis 4.0: tags, caption,
    people) and Azure AI Content Safety (image severities). Entra ID only: local auth (keys) off, a custom
    subdomain (token auth needs one); the workload identity gets Cognitive Services User on each."""
    def account(name: str, kind: str, location: str, sku: str) -> dict:
        return {
            "type": "Microsoft.CognitiveServices/accounts", "apiVersion": API["cognitive"],
            "name": v(name), "location": p(location), "kind": kind, "sku": {"name": p(sku)},
            "metadata": {"checkov": [
                "CKV_AZURE_134: reached from AKS over its public endpoint with Entra ID only (disableLocalAuth); "
                "private endpoints need the platform's VNet design, outside this template",
                "CKV_AZURE_238: the account calls no other Azure resource (no customer-managed key, no storage "
                "of its own), so an identity of its own would have nothing to do; callers use workload identity",
            ]},
            "properties": {
                "customSubDomainName": v(name),
                "disableLocalAuth": True,
                "publicNetworkAccess": "Enabled",
            },
        }
    return [
        account("vision", "ComputerVision", "visionLocation", "visionSku"),
        account("contentSafety", "ContentSafety", "contentSafetyLocation", "contentSafetySku"),
    ]


def acr() -> dict:
    return {
        "type": "Microsoft.ContainerRegistry/registries", "apiVersion": API["acr"],
        "name": v("acr"), "location": p("location"), "sku": {"name": "Standard"},
        "metadata": {"checkov": [
            "CKV_AZURE_139: AKS pulls over the public endpoint with its kubelet identity (AcrPull only); "
            "private endpoints need the platform's VNet design",
            "CKV_AZURE_166: quarantine is a Premium feature; the image is built by CI and deployed by digest",
        ]},
        "properties": {"adminUserEnabled": False, "anonymousPullEnabled": False,
                       "publicNetworkAccess": "Enabled"},
    }


def aks() -> dict:
    """AKS: OIDC issuer + workload identity; a run pool the autoscaler grows 0→N."""
    return {
        "type": "Microsoft.ContainerService/managedClusters", "apiVersion": API["aks"],
        "name": v("aks"), "location": p("location"),
        "metadata": {"checkov": [
            "CKV_AZURE_172: the Key Vault secrets CSI driver is not used; pods reach Azure with workload "
            "identity and hold no Key Vault secrets",
        ]},
        "identity": {"type": "SystemAssigned"},
        "sku": {"name": "Base", "tier": "Standard"},
        "dependsOn": ["[resourceId('Microsoft.OperationalInsights/workspaces', variables('logs'))]"],
        "properties": {
            "dnsPrefix": v("aks"),
            "kubernetesVersion": p("kubernetesVersion"),
            "enableRBAC": True,
            "disableLocalAccounts": True,
            "aadProfile": {"managed": True, "enableAzureRBAC": True},
            "oidcIssuerProfile": {"enabled": True},
            "securityProfile": {"workloadIdentity": {"enabled": True}},
            "networkProfile": {"networkPlugin": "azure", "networkPolicy": "azure", "loadBalancerSku": "standard"},
            "apiServerAccessProfile": {"authorizedIPRanges": p("apiServerAuthorizedIpRanges")},
            "autoUpgradeProfile": {"upgradeChannel": "patch"},
            "agentPoolProfiles": [
                {"name": "system", "mode": "System", "count": 2, "vmSize": p("systemPoolVmSize"),
                 "osType": "Linux", "type": "VirtualMachineScaleSets", "enableAutoScaling": False,
                 "maxPods": 50, "onlyCriticalAddonsEnabled": False, "osDiskType": "Ephemeral",
                 "enableEncryptionAtHost": True},
                {"name": "runs", "mode": "User", "count": 0, "minCount": 0, "maxCount": p("runPoolMaxNodes"),
                 "enableAutoScaling": True, "vmSize": p("runPoolVmSize"), "osType": "Linux",
                 "type": "VirtualMachineScaleSets", "maxPods": 30, "osDiskType": "Ephemeral",
                 "enableEncryptionAtHost": True,
                 "nodeLabels": {"imgpipe.io/pool": "runs"},
                 "nodeTaints": ["imgpipe.io/runs=true:NoSchedule"]},
            ],
            "autoScalerProfile": {"scale-down-unneeded-time": "5m", "scale-down-delay-after-add": "5m",
                                  "scan-interval": "10s", "expander": "least-waste"},
            "addonProfiles": {"omsagent": {"enabled": True, "config": {
                "logAnalyticsWorkspaceResourceID": "[resourceId('Microsoft.OperationalInsights/workspaces', variables('logs'))]"}},
                "azurepolicy": {"enabled": True}, "kubeDashboard": {"enabled": False}},
        },
    }


def federated_credentials() -> list[dict]:
    """The workload identity trusts AKS's service accounts (deploy/helm, deploy/k8s), one credential each.
    One after the other: Azure refuses concurrent writes on one identity."""
    return [
        {
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "apiVersion": API["identity"],
            "name": "[format('{0}/dagster', variables('identity'))]",
            "dependsOn": [f"[{IDENTITY_ID}]", f"[{AKS_ID}]"],
            "properties": {
                "issuer": f"[reference({AKS_ID}, '{API['aks']}').oidcIssuerProfile.issuerURL]",
                "subject": f"[format('system:serviceaccount:{{0}}:{SERVICE_ACCOUNTS['dagster']}', parameters('kubernetesNamespace'))]",
                "audiences": ["api://AzureADTokenExchange"],
            },
        },
        {
            "type": "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials",
            "apiVersion": API["identity"],
            "name": "[format('{0}/web', variables('identity'))]",
            "dependsOn": ["[resourceId('Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials', variables('identity'), 'dagster')]"],
            "properties": {
                "issuer": f"[reference({AKS_ID}, '{API['aks']}').oidcIssuerProfile.issuerURL]",
                "subject": f"[format('system:serviceaccount:{{0}}:{SERVICE_ACCOUNTS['web']}', parameters('kubernetesNamespace'))]",
                "audiences": ["api://AzureADTokenExchange"],
            },
        },
    ]


def postgres() -> list[dict]:
    """Dagster's run and event storage: PostgreSQL flexible server, its database and firewall rule."""
    return [
        {
            "type": "Microsoft.DBforPostgreSQL/flexibleServers", "apiVersion": API["postgres"],
            "name": v("postgres"), "location": p("location"),
            "sku": {"name": "Standard_B2s", "tier": "Burstable"},
            "properties": {
                "version": "16",
                "administratorLogin": p("postgresAdminLogin"),
                "administratorLoginPassword": p("postgresAdminPassword"),
                "storage": {"storageSizeGB": 32, "autoGrow": "Enabled"},
                "backup": {"backupRetentionDays": 7, "geoRedundantBackup": "Disabled"},
                "highAvailability": {"mode": "Disabled"},
                "authConfig": {"activeDirectoryAuth": "Enabled", "passwordAuth": "Enabled"},
                "network": {"publicNetworkAccess": "Enabled"},
            },
        },
        {
            "type": "Microsoft.DBforPostgreSQL/flexibleServers/databases", "apiVersion": API["postgres"],
            "name": "[format('{0}/dagster', variables('postgres'))]",
            "dependsOn": ["[resourceId('Microsoft.DBforPostgreSQL/flexibleServers', variables('postgres'))]"],
            "properties": {"charset": "UTF8", "collation": "en_US.utf8"},
        },
        {
            "type": "Microsoft.DBforPostgreSQL/flexibleServers/firewallRules", "apiVersion": API["postgres"],
            "name": "[format('{0}/AllowAzureServices', variables('postgres'))]",
            "dependsOn": ["[resourceId('Microsoft.DBforPostgreSQL/flexibleServers', variables('postgres'))]"],
            "properties": {"startIpAddress": "0.0.0.0", "endIpAddress": "0.0.0.0"},
        },
    ]


def role_assignments() -> list[dict]:
    """Least-privilege Azure RBAC role assignments, each on the narrowest scope."""
    signal_queue_id = f"[resourceId('Microsoft.Storage/storageAccounts/queueServices/queues', variables('storage'), 'default', '{SIGNAL_QUEUE}')]"
    batch_queue_id = f"[resourceId('Microsoft.ServiceBus/namespaces/queues', variables('serviceBus'), '{BATCH_QUEUE}')]"
    results_hub_id = f"[resourceId('Microsoft.EventHub/namespaces/eventhubs', variables('eventHubs'), '{RESULTS_HUB}')]"
    identity = f"[{IDENTITY_ID}]"
    return [
        role_assignment("app", "Storage Blob Data Contributor", APP_PRINCIPAL, LAKE_SCOPE,
                        [f"[resourceId('Microsoft.Storage/storageAccounts/blobServices/containers', variables('storage'), 'default', '{CONTAINER}')]", identity]),
        role_assignment("app", "Storage Queue Data Message Processor", APP_PRINCIPAL, SIGNAL_QUEUE_SCOPE,
                        [signal_queue_id, identity]),
        role_assignment("eventgrid", "Storage Queue Data Message Sender",
                        f"[reference(resourceId('Microsoft.EventGrid/systemTopics', variables('systemTopic')), '{API['eventgrid']}', 'full').identity.principalId]",
                        SIGNAL_QUEUE_SCOPE,
                        [signal_queue_id, "[resourceId('Microsoft.EventGrid/systemTopics', variables('systemTopic'))]"]),
        role_assignment("app", "Azure Service Bus Data Sender", APP_PRINCIPAL, BATCH_QUEUE_SCOPE, [batch_queue_id, identity]),
        role_assignment("app", "Azure Service Bus Data Receiver", APP_PRINCIPAL, BATCH_QUEUE_SCOPE, [batch_queue_id, identity]),
        role_assignment("app", "Azure Event Hubs Data Sender", APP_PRINCIPAL, RESULTS_HUB_SCOPE, [results_hub_id, identity]),
        role_assignment("app", "Azure Event Hubs Data Receiver", APP_PRINCIPAL, RESULTS_HUB_SCOPE, [results_hub_id, identity]),
        role_assignment("app", "Cognitive Services User", APP_PRINCIPAL, VISION_SCOPE, [f"[{VISION_ID}]", identity]),
        role_assignment("app", "Cognitive Services User", APP_PRINCIPAL, CONTENT_SAFETY_SCOPE,
                        [f"[{CONTENT_SAFETY_ID}]", identity]),
        role_assignment("kubelet", "AcrPull",
                        f"[reference({AKS_ID}, '{API['aks']}').identityProfile.kubeletidentity.objectId]", ACR_SCOPE,
                        ["[resourceId('Microsoft.ContainerRegistry/registries', variables('acr'))]", f"[{AKS_ID}]"]),
    ]


def template() -> dict:
    s = Settings()
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"description": "imgpipe on Azure. Generated by deploy/azure/build_template.py — edit that, not this."},
        "parameters": parameters(s),
        "variables": variables(),
        "resources": [
            log_workspace(),
            workload_identity(),
            storage_account(), *lake_filesystem(), *signal_queue(), lifecycle_policy(),
            *cosmos_account(), *cosmos_containers(), cosmos_data_role(),
            *servicebus(s),
            eventgrid_topic(), eventgrid_subscription(),
            *event_hubs(),
            *understanding_accounts(),
            acr(), aks(), *federated_credentials(),
            *postgres(),
            *role_assignments(),
        ],
        "outputs": outputs(),
    }


def render() -> str:
    return json.dumps(template(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.is_file() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python deploy/azure/build_template.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(template()['resources'])} resources)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
