"""Validate ARM template resources offline against Azure's published resource schemas
(Azure/azure-resource-manager-schemas, MIT; the versions used are copied to tests/data/arm-schemas). Each resource ``{type, apiVersion}``
validates (JSON Schema draft 4) against ``schemas/<apiVersion>/<Namespace>.json#/resourceDefinitions/<a_b>``;
``https://schema.management.azure.com/schemas/...`` references resolve to the files in that folder."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

# A copy of the schemas the template uses is kept with the tests (tests/data/README.md), so the check runs
# on any fresh clone.
SCHEMAS = Path(__file__).resolve().parent / "data" / "arm-schemas" / "schemas"
BASE = "https://schema.management.azure.com/schemas/"


def available() -> bool:
    return SCHEMAS.is_dir()


@lru_cache(maxsize=None)
def _load(relative: str) -> dict:
    return json.loads((SCHEMAS / relative).read_text())


def _retrieve(uri: str) -> Resource:
    if not uri.startswith(BASE):
        raise LookupError(f"only Azure's schemas resolve offline, not {uri}")
    return Resource.from_contents(_load(uri[len(BASE):]), default_specification=DRAFT4)


_REGISTRY = Registry(retrieve=_retrieve)


def schema_of(resource: dict) -> tuple[str | None, str]:
    """(schema file relative to SCHEMAS, resource definition key), or (None, key) when the snapshot has none.
    A namespace's definitions may be split over files (Microsoft.ContainerService.Aks.json)."""
    namespace, _, rest = resource["type"].partition("/")
    key = rest.replace("/", "_")
    folder = SCHEMAS / resource["apiVersion"]
    for path in sorted(folder.glob(f"{namespace}*.json")) if folder.is_dir() else ():
        relative = f"{resource['apiVersion']}/{path.name}"
        if path.stem != namespace and not path.stem.startswith(namespace + "."):
            continue
        if key in _load(relative).get("resourceDefinitions", {}):
            return relative, key
    return None, key


def resource_errors(resource: dict) -> list[str]:
    """Schema errors of one ARM resource (``dependsOn`` and nested ``resources`` are not part of it)."""
    relative, key = schema_of(resource)
    if relative is None:
        return [f"no published schema for {resource['type']} {resource['apiVersion']}"]
    body = {k: v for k, v in resource.items() if k not in ("dependsOn", "resources", "condition", "copy", "metadata")}
    validator = jsonschema.Draft4Validator({"$ref": f"{BASE}{relative}#/resourceDefinitions/{key}"},
                                           registry=_REGISTRY)
    return [f"{resource['type']} {resource.get('name')}: {'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
            for e in validator.iter_errors(body)]
