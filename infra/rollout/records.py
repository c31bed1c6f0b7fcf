"""State another machine must find, kept in SSM Parameter Store under ``rollout.state_prefix``:

- ``<prefix>/<env>/release``: the release record, written when a rollout (or an upgrade) succeeds: the launch
  template version and AMI the group runs, and the ones it ran before (what `inv rollback` rolls back to when no
  refresh is running, and what prune must keep);
- ``<prefix>/<env>/upgrade``: the state of an upgrade, written before and after each of its steps, so an
  interrupted `inv upgrade` resumes where it stopped, from any machine.

Plain String parameters with JSON values (no secrets in them); the parameter's own version history is the audit log.
"""

from __future__ import annotations

import json
from typing import Any

import botocore.exceptions

from infra.aws.session import Aws


def release_name(settings: Any) -> str:
    return f"{settings.rollout.state_prefix}/{settings.name}/release"


def upgrade_name(settings: Any) -> str:
    return f"{settings.rollout.state_prefix}/{settings.name}/upgrade"


def read(aws: Aws, name: str) -> dict[str, Any] | None:
    try:
        value = aws.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "ParameterNotFound":
            return None
        raise
    try:
        doc = json.loads(value)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def write(aws: Aws, name: str, doc: dict[str, Any]) -> None:
    aws.client("ssm").put_parameter(
        Name=name, Value=json.dumps(doc, sort_keys=True, separators=(",", ":")), Type="String", Overwrite=True,
        Description="nextcloud-image state (written by inv rollout/upgrade)",
    )
