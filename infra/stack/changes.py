"""A change set as a readable diff, and the rule that stops data loss: no data-bearing resource is replaced or
deleted (or a secret regenerated) without the operator saying so explicitly (``--allow-data-loss``).

Input is ``DescribeChangeSet``'s ``Changes`` list exactly as AWS returns it (botocore's shapes: ResourceChange with
Action Add/Modify/Remove/Import/Dynamic, Replacement True/False/Conditional, Details[].Target).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.stack.template import DATA_BEARING_TYPES

# A modification of these properties gives a secret a new value: for the cluster identity, every user logged out.
_SECRET_VALUE_PROPERTIES = {"GenerateSecretString", "SecretString"}

_SYMBOL = {"Add": "+", "Modify": "~", "Remove": "-", "Import": "<", "Dynamic": "?"}


@dataclass(frozen=True)
class Detail:
    attribute: str
    name: str
    requires_recreation: str
    change_source: str
    causing_entity: str

    def describe(self) -> str:
        what = f"{self.name}" if self.name else self.attribute
        why = ""
        if self.change_source == "ParameterReference" and self.causing_entity:
            why = f" (parameter {self.causing_entity})"
        elif self.change_source in ("ResourceReference", "ResourceAttribute") and self.causing_entity:
            why = f" (from {self.causing_entity})"
        elif self.change_source == "DirectModification":
            why = " (template)"
        recreate = {"Always": ", new resource", "Conditionally": ", maybe a new resource"}.get(
            self.requires_recreation, ""
        )
        return f"{what}{why}{recreate}"


@dataclass(frozen=True)
class Change:
    action: str
    logical_id: str
    resource_type: str
    physical_id: str = ""
    replacement: str = ""
    details: tuple[Detail, ...] = field(default_factory=tuple)

    @property
    def data_bearing(self) -> bool:
        return self.resource_type in DATA_BEARING_TYPES

    @property
    def verb(self) -> str:
        if self.action == "Modify" and self.replacement == "True":
            return "REPLACE"
        if self.action == "Modify" and self.replacement == "Conditional":
            return "replace?"
        return {"Add": "add", "Modify": "modify", "Remove": "REMOVE"}.get(self.action, self.action.lower())

    def risk(self) -> str | None:
        """Why this change would lose data, or None."""
        if not self.data_bearing:
            return None
        if self.action == "Remove":
            return "deleted"
        if self.action == "Modify" and self.replacement == "True":
            return "replaced by a new, empty one"
        if self.action == "Modify" and self.replacement == "Conditional":
            return "possibly replaced by a new, empty one (CloudFormation decides while updating)"
        if (
            self.action == "Modify"
            and self.resource_type == "AWS::SecretsManager::Secret"
            and any(d.name in _SECRET_VALUE_PROPERTIES for d in self.details)
        ):
            return "given a new value (its generator or value changes)"
        return None


def parse_changes(changes: Iterable[Mapping[str, Any]]) -> list[Change]:
    """DescribeChangeSet's Changes → :class:`Change` (only resource changes; hooks are not changes)."""
    parsed = []
    for change in changes:
        rc = change.get("ResourceChange")
        if change.get("Type", "Resource") != "Resource" or not rc:
            continue
        details = tuple(
            Detail(
                attribute=d.get("Target", {}).get("Attribute", ""),
                name=d.get("Target", {}).get("Name", ""),
                requires_recreation=d.get("Target", {}).get("RequiresRecreation", ""),
                change_source=d.get("ChangeSource", ""),
                causing_entity=d.get("CausingEntity", ""),
            )
            for d in rc.get("Details", [])
        )
        parsed.append(
            Change(
                action=rc.get("Action", ""),
                logical_id=rc.get("LogicalResourceId", ""),
                resource_type=rc.get("ResourceType", ""),
                physical_id=rc.get("PhysicalResourceId", ""),
                replacement=rc.get("Replacement", ""),
                details=details,
            )
        )
    order = {"Remove": 0, "Modify": 1, "Add": 2}
    return sorted(parsed, key=lambda c: (order.get(c.action, 3), c.logical_id))


def data_risks(changes: Iterable[Change]) -> list[tuple[Change, str]]:
    """The changes that would lose data, with what would happen to each."""
    return [(c, r) for c in changes if (r := c.risk()) is not None]


def render_diff(changes: list[Change]) -> list[str]:
    """One line per change, the data-bearing ones marked; then a loud block for every risk."""
    if not changes:
        return ["  (no resource changes)"]
    width = max(len(c.logical_id) for c in changes)
    type_width = max(len(c.resource_type) for c in changes)
    lines = []
    for c in changes:
        symbol = "!" if c.verb in ("REPLACE", "replace?") else _SYMBOL.get(c.action, "?")
        mark = "  [data]" if c.data_bearing else ""
        detail = ""
        if c.action == "Modify" and c.details:
            detail = "  " + "; ".join(dict.fromkeys(d.describe() for d in c.details))
        line = f"  {symbol} {c.verb:<8} {c.logical_id:<{width}}  {c.resource_type:<{type_width}}{mark}{detail}"
        lines.append(line.rstrip())
    return lines


def render_risks(risks: list[tuple[Change, str]]) -> list[str]:
    if not risks:
        return []
    bar = "!" * 100
    lines = [bar, "!!! DATA LOSS: this change set would destroy data:"]
    for change, what in risks:
        causes = "; ".join(dict.fromkeys(d.describe() for d in change.details if d.requires_recreation != "Never"))
        because = f": {causes}" if causes else ""
        lines.append(f"!!!   {change.logical_id} ({change.resource_type}) would be {what}{because}")
    lines.append(
        "!!! The old resource is kept (DeletionPolicy Retain/Snapshot), but the environment would use the new one."
    )
    lines.append(bar)
    return lines
