"""What a running instance serves and talks to: the site, object storage, database, Redis, secrets, the
cluster's install and upgrade rights, logs and the web tier."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator

from render import capacity
from render.rules import S3_NAMING_RULES, s3_bucket_problem, trusted_proxy_problem
from render.secret_refs import MAY_BE_EMPTY, InvalidReference, classify
from render.sections import Section as _Section
from render.sections import matching
from render.settings.common import _HOSTNAME, _REGION, SecretRef, _is_ip, _port_ok


class Site(_Section):
    domain: str
    trusted_domains: list[str] = Field(default_factory=list)
    trusted_proxies: list[str] = Field(default_factory=list)
    overwrite_protocol: Literal["http", "https"] = "https"
    internet: bool = Field(
        default=True,
        description="whether the nodes reach the internet (Nextcloud's has_internet_connection): false where they "
        "cannot, or cron.php waits minutes on Nextcloud's update check at every run",
    )

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if not _HOSTNAME.fullmatch(v):
            raise ValueError("must be a DNS name or IP address such as cloud.example.com")
        return v

    @field_validator("trusted_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for d in v:
            host, _, port = d.partition(":") if d.count(":") == 1 else (d, "", "")
            if not (_HOSTNAME.fullmatch(host) or _is_ip(host)) or (port and not _port_ok(port)):
                raise ValueError(
                    f"{d!r} is not a DNS name or IP address (with an optional port 1-65535); write e.g. "
                    "cloud.example.com"
                )
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, v: list[str]) -> list[str]:
        for cidr in v:
            problem = trusted_proxy_problem(cidr)
            if problem:
                raise ValueError(problem)
        return v


class S3(_Section):
    bucket: str | None = Field(default=None, description="primary object storage bucket; unset = local data dir")
    region: str | None = None
    endpoint: str | None = Field(default=None, description="S3-compatible endpoint URL; unset = AWS")
    path_style: bool = False

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str | None) -> str | None:
        problem = s3_bucket_problem(v) if v is not None else None
        if problem:
            raise ValueError(
                f"{v!r} is not a valid S3 bucket name: it {problem}; choose a name such as example-nextcloud-primary "
                f"(S3's rules: {S3_NAMING_RULES})"
            )
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str | None) -> str | None:
        if v is not None and not _REGION.fullmatch(v):
            raise ValueError("must be an AWS region such as eu-central-1")
        return v

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        m = re.fullmatch(r"https?://(?P<host>[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?/?", v) if v is not None else None
        if v is not None and not (m and _port_ok(m["port"]) and (_HOSTNAME.fullmatch(m["host"]) or _is_ip(m["host"]))):
            raise ValueError("must be an http(s) URL such as https://s3.eu-central-1.amazonaws.com (a port 1-65535)")
        return v


PostgresName = Annotated[
    str,
    matching(r"[A-Za-z_][A-Za-z0-9_]{0,62}", "must be a PostgreSQL name: a letter or _, then up to 62 letters, digits "
             "or _ (e.g. nextcloud)"),
]


class Database(_Section):
    host: str
    port: int = Field(default=5432, ge=1, le=65535)
    name: PostgresName = "nextcloud"
    user: PostgresName = "nextcloud"
    # verify-full to PostgreSQL (docs/security.md): the AWS bake downloads the RDS CA bundle from ca_bundle_url into
    # the image and refuses it unless its sha256 is ca_bundle_sha256 (required for AWS: _aws_rules); every client of
    # the node then uses sslmode=verify-full with it. Both are build inputs: a new bundle is a new image.
    ca_bundle_url: str = Field(default="https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem",
                               pattern=r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._~/%-]*$")
    ca_bundle_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not (_HOSTNAME.fullmatch(v) or _is_ip(v)):
            raise ValueError("must be a DNS name or IP address (the RDS endpoint)")
        return v


class Redis(_Section):
    host: str
    port: int = Field(default=6379, ge=1, le=65535)
    tls: bool = False

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not (_HOSTNAME.fullmatch(v) or _is_ip(v)):
            raise ValueError("must be a DNS name or IP address (the ElastiCache endpoint)")
        return v


class Secrets(_Section):
    """References resolved at boot by the instance role; literals only in the local environment.

    The grammar is render/secret_refs.py, the same the image's resolver reads: what passes here parses at boot.
    """

    db_password: SecretRef
    redis_password: SecretRef = "literal:"
    instanceid: SecretRef
    passwordsalt: SecretRef
    secret: SecretRef
    admin_password: SecretRef

    @field_validator("*")
    @classmethod
    def _ref(cls, v: str, info: ValidationInfo) -> str:
        try:
            ref = classify(v)
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None
        if ref.kind == "literal" and not ref.literal and info.field_name not in MAY_BE_EMPTY:
            allowed = " and ".join(MAY_BE_EMPTY)
            raise ValueError(
                f"the literal value is empty; write literal:<value>, or reference the secret (only {allowed} may "
                "be empty, meaning no password)"
            )
        return v


class Cluster(_Section):
    admin_user: Annotated[
        str, matching(r"[A-Za-z0-9_.@-]{1,64}", "must be 1-64 letters, digits and _.@- (e.g. admin)")
    ] = "admin"
    allow_install: bool = Field(default=True, description="an instance may install Nextcloud on an empty database")
    allow_upgrade: bool = Field(default=False, description="an instance may upgrade the database to its code")


class Logs(_Section):
    """Where an instance's logs go: CloudWatch Logs on AWS (one group per environment, one stream per instance,
    shipped from the journal by the instance role); the local twin keeps them in the journal."""

    group_name: str | None = Field(
        default=None, description="CloudWatch Logs group (the stack's LogGroupName); default /nextcloud/<name>"
    )
    nextcloud_loglevel: int = Field(default=2, ge=0, le=4, description="Nextcloud's loglevel: 0 debug .. 4 fatal")

    @field_validator("group_name")
    @classmethod
    def _group_name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._/#-]{1,512}", v):
            raise ValueError("must be a CloudWatch Logs group name: 1-512 of letters, digits and . _ / # -")
        return v

    def group_for(self, environment: str) -> str:
        """The log group of environment ``environment``: the setting, or /nextcloud/<environment>."""
        return self.group_name or f"/nextcloud/{environment}"


class Web(_Section):
    """Each instance's web tier: Apache prefork workers and PHP's memory_limit, sized from the instance's memory
    (render/capacity.py at render, nextcloud-size-workers at boot; docs/capacity.md)."""

    worker_memory_mb: int = Field(
        default=capacity.WORKER_MEMORY_MIB, ge=32, le=2048,
        description="memory one busy Apache worker (a Nextcloud request in mod_php) holds; workers = pool / this",
    )
    max_workers: int | None = Field(
        default=None, ge=capacity.MIN_WORKERS, le=capacity.MAX_WORKERS,
        description="at most this many Apache workers per instance (unset: as many as the memory holds)",
    )
