"""How the fleet is named and changed: launch template, Auto Scaling group, rollout and upgrade."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from render.sections import Section as _Section
from render.settings.common import _AWS_NAME
from render.stack_settings import PROBE_RULE_PRIORITY


class LaunchTemplate(_Section):
    name: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _AWS_NAME.fullmatch(v):
            raise ValueError("must be 3-128 characters of letters, digits and ()./_-")
        return v


class Autoscaling(_Section):
    group_name: str | None = None

    @field_validator("group_name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w .:/@+=-]{1,255}", v):
            raise ValueError("must be 1-255 characters (letters, digits, spaces and .:/@+=-_)")
        return v


_ALARM_NAME = re.compile(r"^[^\x00-\x1f]{1,255}$")
_SSM_PATH = re.compile(r"^(/[A-Za-z0-9_.-]+)+$")


class Rollout(_Section):
    """Instance refresh preferences (StartInstanceRefresh Preferences) and how `inv rollout` waits."""

    min_healthy_percentage: int = Field(default=90, ge=0, le=100)
    max_healthy_percentage: int = Field(default=150, ge=100, le=200)
    instance_warmup_seconds: int = Field(default=120, ge=0, le=3600)
    checkpoint_percentages: list[Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=lambda: [50, 100])
    checkpoint_delay_seconds: int = Field(default=300, ge=0, le=172800)
    auto_rollback: bool = True
    skip_matching: bool = True
    alarm_names: list[str] = Field(
        default_factory=list,
        description="CloudWatch alarms that roll the refresh back when they go into ALARM (the stack's outputs)",
    )
    scale_in_protected_instances: Literal["Refresh", "Ignore", "Wait"] = Field(
        default="Refresh", description="what the refresh does with instances protected from scale in"
    )
    standby_instances: Literal["Terminate", "Ignore", "Wait"] = Field(
        default="Ignore", description="what the refresh does with instances in Standby"
    )
    bake_time_seconds: int = Field(default=300, ge=0, le=172800, description="alarms are watched this long after")
    poll_seconds: float = Field(default=15, ge=0, le=300, description="seconds between progress polls")
    timeout_minutes: int = Field(default=240, ge=1, le=2880, description="how long rollout waits for the refresh")
    state_prefix: str = Field(
        default="/nextcloud-image",
        description="SSM parameter path under which the release record and the upgrade state live",
    )

    @field_validator("alarm_names")
    @classmethod
    def _alarms(cls, v: list[str]) -> list[str]:
        if len(v) > 10:
            raise ValueError("at most 10 alarms (an instance refresh limit)")
        for name in v:
            if not _ALARM_NAME.match(name):
                raise ValueError(f"{name!r} is not a CloudWatch alarm name (1-255 characters, no control characters)")
        if len(set(v)) != len(v):
            raise ValueError("names an alarm twice; list each once")
        return v

    @field_validator("state_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _SSM_PATH.match(v) or v.lower().startswith(("/aws", "/ssm")):
            raise ValueError("must be an SSM parameter path such as /nextcloud-image (not under /aws or /ssm)")
        return v

    @field_validator("checkpoint_percentages")
    @classmethod
    def _checkpoints(cls, v: list[int]) -> list[int]:
        if v and (v != sorted(set(v)) or v[-1] != 100):
            raise ValueError("must be strictly increasing and end with 100, e.g. [50, 100]")
        return v

    @model_validator(mode="after")
    def _window(self) -> Rollout:
        if self.max_healthy_percentage - self.min_healthy_percentage > 100:
            raise ValueError(
                "max_healthy_percentage - min_healthy_percentage must be at most 100 (an AWS limit); "
                "raise min_healthy_percentage or lower max_healthy_percentage"
            )
        return self


_LISTENER_ARN = re.compile(
    r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z]{2}(-[a-z]+)+-\d:\d{12}:listener/app/[A-Za-z0-9-]+/[0-9a-f]+/[0-9a-f]+$"
)
_DB_IDENTIFIER = re.compile(r"^[a-zA-Z](?!.*--)[a-zA-Z0-9-]{0,62}(?<!-)$")


class Upgrade(_Section):
    """`inv upgrade`: how the cluster is put in maintenance and how the upgrade refresh runs."""

    listener_arn: str | None = Field(
        default=None,
        description="the load balancer's HTTPS listener: a fixed 503 rule on it is the cluster-wide maintenance",
    )
    maintenance_rule_priority: int = Field(default=1, ge=1, le=50000)
    db_instance_identifier: str | None = Field(
        default=None, description="RDS instance to snapshot before the upgrade (unset: no snapshot, with a warning)"
    )
    min_healthy_percentage: int = Field(default=0, ge=0, le=100)
    max_healthy_percentage: int = Field(default=100, ge=100, le=200)
    timeout_minutes: int = Field(default=60, ge=1, le=1440, description="how long the upgrade instance may take")

    @field_validator("listener_arn")
    @classmethod
    def _listener(cls, v: str | None) -> str | None:
        if v is not None and not _LISTENER_ARN.match(v):
            raise ValueError(
                "must be an Application Load Balancer listener ARN "
                "(arn:aws:elasticloadbalancing:REGION:ACCOUNT:listener/app/NAME/ID/ID)"
            )
        return v

    @field_validator("db_instance_identifier")
    @classmethod
    def _db(cls, v: str | None) -> str | None:
        if v is not None and not _DB_IDENTIFIER.match(v):
            raise ValueError("must be an RDS DB instance identifier (letters, digits, hyphens; starts with a letter)")
        return v

    @field_validator("maintenance_rule_priority")
    @classmethod
    def _not_the_probes(cls, v: int) -> int:
        if v == PROBE_RULE_PRIORITY:
            raise ValueError(f"{v} is the stack's rule that answers /readyz and /livez 404 (ProbesNotFound in "
                             "infra/stack/nextcloud.yaml): choose another free priority, e.g. 1")
        return v

    @model_validator(mode="after")
    def _window(self) -> Upgrade:
        if self.max_healthy_percentage - self.min_healthy_percentage > 100:
            raise ValueError("max_healthy_percentage - min_healthy_percentage must be at most 100 (an AWS limit)")
        return self
