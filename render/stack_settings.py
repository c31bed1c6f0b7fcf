"""The ``[stack]`` settings: what ``inv deploy-stack`` passes to the CloudFormation stack (infra/stack/nextcloud.yaml).

Sizes, options and the few values only an operator can know (the certificate, the hosted zone). What the stack
*creates* (endpoints, bucket, secrets) flows the other way, through render/stack_outputs.py.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from render.rules import s3_bucket_problem
from render.sections import FieldProblems, Section

# Used with fullmatch: `$` would also match before a final newline.
_CERTIFICATE = re.compile(r"arn:aws[a-z-]*:acm:[a-z]{2}(-[a-z]+)+-\d:\d{12}:certificate/[0-9a-f-]{36}")
_TOPIC = re.compile(r"arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-\d:\d{12}:[A-Za-z0-9_-]{1,256}")

# The HTTPS listener's rule that answers /readyz and /livez 404 to outside callers (infra/stack/nextcloud.yaml,
# ProbesNotFound): after the upgrade's maintenance rule (upgrade.maintenance_rule_priority, 1 by default), before any
# rule that forwards. The maintenance rule may not take it.
PROBE_RULE_PRIORITY = 2
# What AWS WAF accepts as a rate-based rule's limit (requests per client address in the 5-minute window).
RATE_LIMIT_BOUNDS = (10, 2_000_000_000)


class _Part(Section):
    """A part of [stack]: the rules every settings section follows (render/sections.py)."""


class StackDatabase(_Part):
    """RDS PostgreSQL."""

    engine_version: Literal["15", "16", "17"] = "16"
    instance_class: str = Field(default="db.t4g.medium", pattern=r"^db\.[a-z0-9]+\.[a-z0-9]+$")
    allocated_storage_gb: int = Field(default=50, ge=20, le=65536)
    max_allocated_storage_gb: int = Field(default=200, ge=20, le=65536)
    multi_az: bool = True
    backup_retention_days: int = Field(default=14, ge=1, le=35)
    max_connections: int | None = Field(
        default=None, ge=25, le=5000,
        description="max_connections the stack sets (unset: RDS's formula for the class; render/capacity.py)",
    )
    proxy: bool = Field(default=False, description="RDS Proxy between the instances and the database (TLS required)")

    @model_validator(mode="after")
    def _storage(self) -> StackDatabase:
        if self.max_allocated_storage_gb < self.allocated_storage_gb:
            raise ValueError("max_allocated_storage_gb must be at least allocated_storage_gb (the autoscaling ceiling)")
        return self


class StackCache(_Part):
    """ElastiCache replication group."""

    engine: Literal["valkey", "redis"] = "valkey"
    engine_version: str = Field(default="7.2", pattern=r"^\d+\.\d+$")
    node_type: str = Field(default="cache.t4g.small", pattern=r"^cache\.[a-z0-9]+\.[a-z0-9]+$")
    replicas: int = Field(default=1, ge=0, le=5, description="replicas of the primary; >= 1 enables failover")


class StackWaf(_Part):
    """The web ACL in front of the load balancer: rate limits per client address on the login and WebDAV paths."""

    enabled: bool | None = Field(
        default=None, description="unset: on exactly when stack.production is true; true turns it on elsewhere too",
    )
    login_limit: int = Field(
        default=100, ge=RATE_LIMIT_BOUNDS[0], le=RATE_LIMIT_BOUNDS[1],
        description="requests per client address in 5 minutes to the login, password-reset and share-password paths",
    )
    webdav_limit: int = Field(
        default=20000, ge=RATE_LIMIT_BOUNDS[0], le=RATE_LIMIT_BOUNDS[1],
        description="requests per client address in 5 minutes to WebDAV (a syncing client makes many)",
    )


class Stack(_Part):
    """One environment's CloudFormation stack."""

    name: str | None = Field(default=None, description="stack name; default nextcloud-<environment>")
    production: bool = Field(
        default=False,
        description="deletion protection on the database and load balancer; requires the access logs and the web ACL",
    )
    vpc_cidr: str = "10.0.0.0/16"
    availability_zones: Literal[2, 3] = 3
    nat_gateways: Literal["single", "per-az"] = "per-az"
    interface_endpoints: bool = False
    certificate_arn: str | None = Field(default=None, description="ACM certificate for site.domain (this region)")
    hosted_zone_id: str | None = Field(default=None, description="Route 53 zone for an alias of site.domain")
    access_logs_bucket: str | None = None
    alarm_topic_arn: str | None = None
    service_role_arn: str | None = Field(
        default=None,
        description="the role CloudFormation acts with (infra/stack/service-role.json); the deployer only passes it",
    )
    log_retention_days: Literal[
        7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653
    ] = 90
    min_size: int = Field(default=2, ge=0, le=100)
    max_size: int = Field(default=4, ge=1, le=100)
    desired_capacity: int = Field(default=2, ge=0, le=100)
    health_check_grace_seconds: int = Field(default=300, ge=0, le=7200)
    target_cpu_percent: int = Field(default=50, ge=10, le=90)
    database: StackDatabase = StackDatabase()
    cache: StackCache = StackCache()
    waf: StackWaf = StackWaf()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", v):
            raise ValueError("must be a CloudFormation stack name: a letter, then letters, digits and hyphens")
        return v

    @field_validator("vpc_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a CIDR ({exc}); write e.g. 10.0.0.0/16") from None
        if net.prefixlen != 16 or not net.is_private:
            raise ValueError("must be a private /16 such as 10.0.0.0/16 (each subnet is a /20 of it)")
        return v

    @field_validator("certificate_arn")
    @classmethod
    def _certificate(cls, v: str | None) -> str | None:
        if v is not None and not _CERTIFICATE.fullmatch(v):
            raise ValueError("must be an ACM certificate ARN: arn:aws:acm:REGION:ACCOUNT:certificate/UUID")
        return v

    @field_validator("hosted_zone_id")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"Z[A-Z0-9]{1,31}", v):
            raise ValueError("must be a Route 53 hosted zone id such as Z0123456789ABCDEFGHIJ")
        return v

    @field_validator("access_logs_bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        problem = s3_bucket_problem(v) if v is not None else None
        if problem:
            raise ValueError(f"{v!r} is not a valid S3 bucket name: it {problem}")
        return v

    @field_validator("alarm_topic_arn")
    @classmethod
    def _topic(cls, v: str | None) -> str | None:
        if v is not None and not _TOPIC.fullmatch(v):
            raise ValueError("must be an SNS topic ARN: arn:aws:sns:REGION:ACCOUNT:NAME")
        return v

    @field_validator("service_role_arn")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}", v):
            raise ValueError("must be an IAM role ARN: arn:aws:iam::ACCOUNT:role/NAME")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> Stack:
        if not self.min_size <= self.desired_capacity <= self.max_size:
            raise ValueError(
                f"need min_size <= desired_capacity <= max_size, got {self.min_size} / {self.desired_capacity} / "
                f"{self.max_size}; change one of them"
            )
        return self

    @model_validator(mode="after")
    def _production(self) -> Stack:
        if not self.production:
            return self
        problems = []
        if self.access_logs_bucket is None:
            problems.append(("access_logs_bucket", "required with stack.production = true (a record of every request "
                             "to the load balancer): set it to an existing S3 bucket the load balancer may write to "
                             "(docs/stack.md)"))
        if self.waf.enabled is False:
            problems.append(("waf.enabled", "false is refused with stack.production = true (production keeps the "
                             "rate limits at the edge): remove the line, or raise waf.login_limit / waf.webdav_limit"))
        if problems:
            raise FieldProblems(problems)
        return self

    def web_acl(self) -> bool:
        """Whether the stack puts the web ACL in front of the load balancer."""
        return self.production or bool(self.waf.enabled)

    def stack_name(self, environment: str) -> str:
        return self.name or f"nextcloud-{environment}"
