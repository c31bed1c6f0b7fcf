"""The stack's outputs as a settings layer: what CloudFormation created reaches the settings without a human.

``inv deploy-stack`` records the stack's outputs in ``build/<env>/stack-outputs.json``; :func:`stack_layer` turns
them into dotted settings keys (the table :data:`MAPPING`). It only reads that file, so render stays pure and
offline. Where the environment file sets the same key, the two must agree: a different value is a hand-copied
value gone stale, and loading stops with an error naming both places and the fix (delete the line).

A key whose setting does not exist in this version of the settings model is left out (:data:`AWAITED`, checked by
the tests), so the table can already name keys that other parts of the project are adding.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STACK_OUTPUTS = "stack-outputs.json"
SCHEMA = 1


def _text(v: str) -> str:
    return v


def _int(v: str) -> int:
    return int(v)


def _csv(v: str) -> list[str]:
    return [item for item in v.split(",") if item]


def _first(v: str) -> str:
    return _csv(v)[0]


def _true(_: str) -> bool:
    return True


@dataclass(frozen=True)
class Feed:
    """One output feeding one setting."""

    output: str
    key: str
    convert: Callable[[str], Any] = _text


# Output (infra/stack/nextcloud.yaml) → dotted settings key. The names match the template's Outputs section.
MAPPING: tuple[Feed, ...] = (
    Feed("DatabaseAddress", "database.host"),
    # With stack.database.proxy the stack also has this output, and the instances connect through the proxy: later
    # feeds win (DatabaseAddress stays the database's own, which inv bootstrap-db uses).
    Feed("DatabaseProxyAddress", "database.host"),
    Feed("DatabasePort", "database.port", _int),
    Feed("CacheAddress", "redis.host"),
    Feed("CachePort", "redis.port", _int),
    Feed("CacheAddress", "redis.tls", _true),  # the stack's cache always has in-transit encryption
    Feed("BucketName", "s3.bucket"),
    Feed("BucketRegion", "s3.region"),
    Feed("PublicSubnetCidrs", "site.trusted_proxies", _csv),
    Feed("DatabasePasswordSecretArn", "secrets.db_password"),
    Feed("CacheAuthTokenSecretArn", "secrets.redis_password"),
    Feed("InstanceIdSecretArn", "secrets.instanceid"),
    Feed("PasswordSaltSecretArn", "secrets.passwordsalt"),
    Feed("SecretSecretArn", "secrets.secret"),
    Feed("AdminPasswordSecretArn", "secrets.admin_password"),
    Feed("LaunchTemplateName", "launch_template.name"),
    Feed("GroupName", "autoscaling.group_name"),
    Feed("RolloutAlarmNames", "rollout.alarm_names", _csv),
    Feed("PublicSubnetIds", "bake.subnet_id", _first),
    Feed("LogGroupName", "logs.group_name"),
)

# Settings the table feeds that the settings model does not have yet (other branches add them).
AWAITED: frozenset[str] = frozenset()

# Values that stand in for what the stack will provide, for the one command that runs before it exists
# (deploy-stack's first run). They pass validation and are recognisable anywhere they would leak.
PENDING_VALUES: Mapping[str, Any] = {
    "database.host": "pending-stack.invalid",
    "redis.host": "pending-stack.invalid",
    "s3.bucket": "pending-stack",
    "bake.subnet_id": "subnet-00000000",
    "secrets.db_password": "ssm:/pending-stack/db_password",
    "secrets.redis_password": "ssm:/pending-stack/redis_password",
    "secrets.instanceid": "ssm:/pending-stack/instanceid",
    "secrets.passwordsalt": "ssm:/pending-stack/passwordsalt",
    "secrets.secret": "ssm:/pending-stack/secret",
    "secrets.admin_password": "ssm:/pending-stack/admin_password",
}


class StackOutputsError(ValueError):
    """The outputs file cannot be used, or disagrees with the environment file; one line per problem, with the fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def outputs_path(root: Path, env: str) -> Path:
    return root / "build" / env / STACK_OUTPUTS


def read_outputs(path: Path) -> dict[str, str] | None:
    """The recorded outputs (OutputKey → OutputValue), or None when deploy-stack has not run for this environment."""
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StackOutputsError([f"{path}: unreadable ({exc}); run `inv deploy-stack` again to rewrite it"]) from None
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(outputs, dict):
        raise StackOutputsError([f"{path}: not a stack outputs file (schema {SCHEMA}); run `inv deploy-stack` again"])
    return {str(k): str(v) for k, v in outputs.items()}


def outputs_document(stack_name: str, stack_id: str, outputs: Mapping[str, str], recorded_at: str) -> str:
    """What deploy-stack writes: the outputs and which stack they came from."""
    doc = {
        "schema": SCHEMA,
        "stack_name": stack_name,
        "stack_id": stack_id,
        "recorded_at": recorded_at,
        "outputs": dict(sorted(outputs.items())),
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def _lookup(data: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def stack_layer(
    outputs: Mapping[str, str] | None,
    file_data: Mapping[str, Any],
    *,
    source: str,
    outputs_source: str,
    known: Callable[[str], bool],
    pending: bool = False,
) -> list[tuple[str, Any, str]]:
    """(dotted key, value, origin) for every setting the stack provides.

    ``file_data`` is the environment file's content (``source`` names it): a key it sets to another value is an
    error. ``known`` tells whether the settings model has a key. With no outputs and ``pending``, the keys the file
    leaves out get :data:`PENDING_VALUES` (deploy-stack's first run, before anything exists).
    """
    if outputs is None:
        if not pending:
            return []
        return [
            (key, value, "stack (not deployed yet)")
            for key, value in PENDING_VALUES.items()
            if not _lookup(file_data, key)[0]
        ]
    layer, conflicts = [], []
    for feed in MAPPING:
        if feed.output not in outputs or not known(feed.key):
            continue
        try:
            value = feed.convert(outputs[feed.output])
        except (ValueError, IndexError):
            raise StackOutputsError(
                [
                    f"{outputs_source}: output {feed.output}={outputs[feed.output]!r} is not usable for {feed.key}; "
                    "run `inv deploy-stack` again"
                ]
            ) from None
        present, current = _lookup(file_data, feed.key)
        if present and current != value:
            conflicts.append(
                f"{feed.key}: {source} says {current!r} but the stack provides {value!r} ({outputs_source}, output "
                f"{feed.output}); delete the line from {source}: the stack's value is used without copying"
            )
        layer.append((feed.key, value, f"stack output {feed.output}"))
    if conflicts:
        raise StackOutputsError(conflicts)
    return layer
