"""The lake's lifecycle policy: rules by prefix and age, from ``lifecycle_rules.json`` (the one source).

- ``due(lake, now)`` / ``apply(lake, now)``: what the rules delete in a lake at ``now`` — the local
  `housekeeping` schedule applies them daily to the local (or emulated) lake;
- ``azure_management_policy(container)``: the same rules as an Azure Storage management policy
  (``Microsoft.Storage/storageAccounts/managementPolicies`` ``properties.policy``), which the ARM template
  in deploy/azure carries; in Azure the storage service applies it (with blob soft delete on, its
  deletions are soft deletes too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources

from orchestration.ports.lake import Lake, ObjectNotFound


@dataclass(frozen=True)
class Rule:
    name: str
    prefix: str
    delete_after_days: int
    why: str = ""


def load_rules(text: str | None = None) -> list[Rule]:
    """The rules from ``lifecycle_rules.json`` (or ``text``), checked: distinct names, prefixes that end in
    '/', whole days ≥ 1 (Azure's unit)."""
    doc = json.loads(text if text is not None else
                     resources.files("orchestration.domain").joinpath("lifecycle_rules.json").read_text())
    rules = [Rule(r["name"], r["prefix"], r["delete_after_days"], r.get("why", "")) for r in doc["rules"]]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise ValueError(f"lifecycle rule names must be unique: {names}")
    for r in rules:
        if not r.prefix.endswith("/") or r.prefix.startswith("/"):
            raise ValueError(f"lifecycle rule {r.name!r}: prefix {r.prefix!r} must be a folder like 'raw/'")
        if not isinstance(r.delete_after_days, int) or r.delete_after_days < 1:
            raise ValueError(f"lifecycle rule {r.name!r}: delete_after_days must be a whole number of days >= 1")
    return rules


def due(lake: Lake, now: datetime, rules: list[Rule] | None = None) -> list[tuple[str, str]]:
    """(rule name, path) of every object a rule deletes at ``now``: older than its days since last write."""
    found = []
    for rule in rules if rules is not None else load_rules():
        limit = now - timedelta(days=rule.delete_after_days)
        found.extend((rule.name, info.path) for info in lake.list_info(rule.prefix) if info.modified_at < limit)
    return found


def apply(lake: Lake, now: datetime, rules: list[Rule] | None = None) -> dict[str, int]:
    """Delete (soft, where the lake keeps deleted objects) what the rules say; returns counts per rule."""
    counts: dict[str, int] = {r.name: 0 for r in (rules if rules is not None else load_rules())}
    for name, path in due(lake, now, rules):
        try:
            lake.delete(path)
            counts[name] += 1
        except ObjectNotFound:
            pass
    return counts


def azure_management_policy(container: str, rules: list[Rule] | None = None) -> dict:
    """The rules as the ``policy`` of an Azure Storage management policy. ``prefixMatch`` starts with the
    container name (Azure's rule); ages are ``daysAfterModificationGreaterThan``."""
    return {
        "rules": [
            {
                "enabled": True,
                "name": rule.name,
                "type": "Lifecycle",
                "definition": {
                    "filters": {"blobTypes": ["blockBlob"], "prefixMatch": [f"{container}/{rule.prefix}"]},
                    "actions": {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": rule.delete_after_days}}},
                },
            }
            for rule in (rules if rules is not None else load_rules())
        ]
    }
