"""Environment settings: load one TOML file per environment, layer overrides, validate into a typed model.

Layering, lowest to highest precedence:
  1. built-in defaults (the field defaults below),
  2. the environment file ``environments/<name>.toml``,
  3. the stack's outputs, ``build/<name>/stack-outputs.json`` as ``inv deploy-stack`` records them (endpoints,
     bucket, secret ARNs, names; the table is render/stack_outputs.py). Where the file sets the same key, both
     must agree: a different value is an error naming both (no stale hand-copied value ever wins silently),
  4. environment variables ``NCIMAGE_<SECTION>__<KEY>`` (values parsed as TOML when they parse, else strings),
  5. command-line flags ``--set section.key=value`` (same value parsing).

Every error names the field (as a dotted path), where the bad value came from, and how to fix it; none quotes a
secret. Rules every field inherits (a new section gets them by subclassing ``render.sections.Section``, here
``_Section``): no control characters in any string, anywhere; no unknown keys; no type coercion. Cross-field rules
raise ``FieldProblems`` so each problem still names its own key.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from render import capacity, nextcloud_releases
from render.rules import (
    S3_NAMING_RULES,
    image_version_problem,
    parse_image_reference,
    s3_bucket_problem,
    trusted_proxy_problem,
)
from render.secret_refs import FORMS_HELP, MAY_BE_EMPTY, InvalidReference, classify
from render.secret_refs import REGION as _REGION_PATTERN
from render.sections import FieldProblems, dotted_key, matching
from render.sections import Section as _Section
from render.stack_outputs import StackOutputsError, outputs_path, read_outputs, stack_layer
from render.stack_settings import PROBE_RULE_PRIORITY, Stack
from render.toml_source import TomlProblem, parse_file
from render.toml_source import parse_value as _parse_toml_value

ENV_PREFIX = "NCIMAGE_"
ENVIRONMENTS_DIR = "environments"

# Every pattern is used with fullmatch: Python's `$` also matches before a final newline.
_REGION = re.compile(_REGION_PATTERN)
_SSM_PARAMETER = re.compile(r"/[A-Za-z0-9/_.-]{1,1010}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}[a-z0-9]")
_AWS_NAME = re.compile(r"[A-Za-z0-9()./_-]{3,128}")
_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\d[a-z0-9-]*\.(nano|micro|small|medium|large|metal|\d*xlarge)")


class SettingsError(Exception):
    """Settings could not be loaded; ``problems`` lists one line per problem, each naming field and fix."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid settings\n" + "\n".join(f"  - {p}" for p in problems))


SecretRef = str


def secret_ref_kind(ref: str) -> str:
    """Classify a secret reference: 'literal', 'secretsmanager' or 'ssm'; raise ValueError with a fix otherwise."""
    return classify(ref).kind


class BaseImage(_Section):
    """Which base the image is baked on: an AMI selector on AWS, a Debian release for the local twin."""

    owner: str | None = Field(default=None, description="AWS account id that publishes the source AMI")
    name_filter: str | None = Field(default=None, description="AMI name filter, newest match wins")
    debian_release: Literal["bookworm"] = "bookworm"

    @field_validator("owner")
    @classmethod
    def _owner(cls, v: str | None) -> str | None:
        if v is not None and not (re.fullmatch(r"\d{12}", v) or v in {"amazon", "self", "aws-marketplace"}):
            raise ValueError("must be a 12-digit AWS account id (Debian's is 136693071363) or 'amazon'/'self'")
        return v


class Nextcloud(_Section):
    image: str = Field(description="Nextcloud image reference; AWS environments pin it by digest")
    version: Annotated[
        str, matching(r"\d+\.\d+\.\d+", "must be a Nextcloud release such as 34.0.3 (major.minor.patch)")
    ] = Field(description="Nextcloud version the image carries")
    release: str | None = Field(
        default=None,
        description="local twin only: a Nextcloud release archive (.tar.bz2/.zip) or unpacked tree to run instead of "
        "the stand-in; verified against its code signature before anything runs. nextcloud.version and "
        "nextcloud.image then come from the release (nextcloud-release:<version>-apache)",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_release(cls, data: object) -> object:
        if not isinstance(data, dict) or not data.get("release"):
            return data
        from render.nextcloud_release_path import release_version

        try:
            version = release_version(Path(str(data["release"])))
        except ValueError as exc:
            raise FieldProblems([("release", str(exc))]) from None
        return {**data, "version": version, "image": f"nextcloud-release:{version}-apache"}

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        parse_image_reference(v)
        return v

    @model_validator(mode="after")
    def _tag_agrees_with_version(self) -> Nextcloud:
        problem = image_version_problem(parse_image_reference(self.image), self.version)
        if problem:
            raise FieldProblems([("image", problem)])
        return self


_APT_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][0-9A-Za-z.+~-]*")


class Docker(_Section):
    """The container engine, pinned: every package its behaviour depends on is installed at this version and held."""

    version: str = Field(
        default="debian",
        description="'debian' installs Debian's docker.io; else the exact apt version of docker-ce and docker-ce-cli",
    )
    containerd_version: str | None = Field(
        default=None, validate_default=True,
        description="exact apt version of containerd.io (required with a docker-ce version)",
    )
    debian_version: str | None = Field(
        default=None, validate_default=True,
        description="with version = 'debian': the exact apt version of Debian's docker.io",
    )

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if v != "debian" and not re.fullmatch(r"[0-9]+:[0-9][0-9A-Za-z.+~-]*", v):
            raise ValueError("must be 'debian' or an exact docker-ce apt version such as 5:27.3.1-1~debian.12~bookworm")
        return v

    @field_validator("containerd_version")
    @classmethod
    def _containerd(cls, v: str | None, info: ValidationInfo) -> str | None:
        engine = info.data.get("version")
        if v is not None and not _APT_VERSION.fullmatch(v):
            raise ValueError("must be an exact apt version such as 1.7.22-1 (see `apt-cache madison containerd.io`)")
        if engine == "debian" and v is not None:
            raise ValueError(
                "pins containerd.io from Docker's repository, but version = 'debian' installs Debian's docker.io "
                "with its own containerd: remove it (or pin docker-ce in docker.version)"
            )
        if engine not in (None, "debian") and v is None:
            raise ValueError(
                "required with a docker-ce version: the exact containerd.io apt version, e.g. 1.7.22-1 "
                "(every engine package is pinned)"
            )
        return v

    @field_validator("debian_version")
    @classmethod
    def _debian(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not _APT_VERSION.fullmatch(v):
            raise ValueError("must be an exact apt version such as 20.10.24+dfsg1-1+deb12u1+b6 "
                             "(see `apt-cache madison docker.io`)")
        if v is not None and info.data.get("version") not in (None, "debian"):
            raise ValueError("pins Debian's docker.io, but docker.version pins docker-ce: remove it")
        return v

    def packages(self) -> dict[str, str]:
        """Package -> exact apt version the image installs and holds ('' = Debian's current, not pinned)."""
        if self.version == "debian":
            return {"docker.io": self.debian_version or ""}
        pins = {"docker-ce": self.version, "docker-ce-cli": self.version}
        return {**pins, "containerd.io": self.containerd_version or ""}


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


class Ami(_Section):
    name_prefix: Annotated[
        str, matching(r"[A-Za-z0-9()./_-]{3,100}", "must be 3-100 letters, digits and ()./_- (e.g. nextcloud-prod)")
    ] = "nextcloud"
    retention: int = Field(default=3, ge=1, le=100, description="AMIs kept per environment when pruning")
    regions: list[str] = Field(default_factory=list, description="extra regions to copy the AMI to")
    root_volume_size_gb: int = Field(default=8, ge=4, le=1024)
    ssm_parameter: str | None = Field(
        default=None, description="SSM parameter the new AMI id is published to in every region (optional)"
    )

    @field_validator("ssm_parameter")
    @classmethod
    def _ssm_parameter(cls, v: str | None) -> str | None:
        if v is not None and not (_SSM_PARAMETER.fullmatch(v) and not v.lower().startswith(("/aws", "/ssm"))):
            raise ValueError(
                "must be an SSM parameter name such as '/nextcloud/prod/ami-id' (starts with '/', letters, digits "
                "and /_.-, at most 1011 characters, not under /aws or /ssm)"
            )
        return v

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        for r in v:
            if not _REGION.fullmatch(r):
                raise ValueError(f"{r!r} is not an AWS region such as eu-west-1")
            if v.count(r) > 1:
                raise ValueError(f"{r!r} is listed twice; list each region once")
        return v


class Bake(_Section):
    """How AWS bakes and canaries run: where the throwaway instances live and how the build host reaches them."""

    subnet_id: str | None = Field(default=None, description="subnet of the bake instance (stack output BakeSubnetId)")
    ssh_interface: Literal["public_ip", "private_ip", "session_manager"] = Field(
        default="public_ip",
        description="how the build host reaches bake and canary instances: their public address, their private "
        "address (a build host inside the VPC), or SSH through Session Manager (no inbound rule at all)",
    )
    ssh_source_cidrs: list[str] = Field(
        default_factory=list,
        description="addresses SSH is allowed from; empty = the build host's own public address (/32)",
    )
    instance_profile: str | None = Field(
        default=None, description="instance profile of the bake instance (ECR pulls, Session Manager)"
    )
    communicator: Literal["ssh", "none"] = Field(
        default="ssh",
        description="'none' only against an AWS emulator: the AWS side of the bake without provisioning",
    )

    @field_validator("subnet_id")
    @classmethod
    def _subnet(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"subnet-[0-9a-f]{8}([0-9a-f]{9})?", v):
            raise ValueError("must be a subnet id such as 'subnet-0123456789abcdef0'")
        return v

    @field_validator("ssh_source_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                net = ipaddress.ip_network(cidr, strict=True)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR ({exc}); write e.g. 203.0.113.7/32") from None
            if net.prefixlen < (24 if net.version == 4 else 56):
                raise ValueError(
                    f"{cidr!r} opens SSH to {net.num_addresses} addresses; name the build host (/32) or its "
                    "network (at most a /24), or leave the list empty to use this host's public address"
                )
        return v

    @field_validator("instance_profile")
    @classmethod
    def _profile(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[\w+=,.@-]{1,128}", v):
            raise ValueError("must be an instance profile name such as 'nextcloud-bake' (not its ARN)")
        return v

    @model_validator(mode="after")
    def _session_manager(self) -> Bake:
        if self.ssh_interface == "session_manager" and not self.instance_profile:
            raise ValueError(
                "bake.ssh_interface = 'session_manager' needs bake.instance_profile: a profile whose role allows "
                "Session Manager (e.g. the AWS managed policy AmazonSSMManagedInstanceCore)"
            )
        return self


class Settings(_Section):
    """One environment, fully validated."""

    name: str
    builder: Literal["local", "aws"]
    region: str = "eu-central-1"
    account_id: str | None = Field(
        default=None, description="the only AWS account this environment may touch (checked before every AWS task)"
    )
    instance_type: str = "t3.medium"
    base_image: BaseImage = BaseImage()
    nextcloud: Nextcloud
    docker: Docker = Docker()
    site: Site
    s3: S3 = S3()
    database: Database
    redis: Redis
    secrets: Secrets
    cluster: Cluster = Cluster()
    logs: Logs = Logs()
    web: Web = Web()
    launch_template: LaunchTemplate = LaunchTemplate()
    autoscaling: Autoscaling = Autoscaling()
    rollout: Rollout = Rollout()
    upgrade: Upgrade = Upgrade()
    ami: Ami = Ami()
    stack: Stack = Stack()
    bake: Bake = Bake()
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("must be 2-32 lowercase letters, digits and hyphens, starting with a letter")
        return v

    @field_validator("region")
    @classmethod
    def _region(cls, v: str) -> str:
        if not _REGION.fullmatch(v):
            raise ValueError("must be an AWS region such as eu-central-1")
        return v

    @field_validator("account_id")
    @classmethod
    def _account_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{12}", v):
            raise ValueError("must be a 12-digit AWS account id such as '123456789012' (quoted, as a string)")
        return v

    @field_validator("instance_type")
    @classmethod
    def _instance_type(cls, v: str) -> str:
        if not _INSTANCE_TYPE.fullmatch(v):
            raise ValueError("must be an EC2 instance type such as t3.medium")
        return v

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not 1 <= len(key) <= 128:
                raise ValueError(f"tag key {key[:40]!r} is {len(key)} characters; EC2 tag keys are 1 to 128: rename it")
            if key.lower().startswith("aws:"):
                raise ValueError(f"tag key {key!r} uses the reserved 'aws:' prefix; rename it")
            if len(value) > 256:
                raise FieldProblems([(dotted_key(key), f"{len(value)} characters; EC2 allows 256 in a tag value: "
                                                       "shorten it")])
        return v

    @model_validator(mode="after")
    def _aws_rules(self) -> Settings:
        if self.builder != "aws":
            return self
        problems: list[tuple[str, str]] = []
        if self.nextcloud.release:
            problems.append(("nextcloud.release", "only the local twin builds from a release archive or tree; an AWS "
                             "bake builds on the digest-pinned official image (nextcloud.image): remove the line"))
        if not self.base_image.owner:
            problems.append(("base_image.owner", "required for AWS: set it to the AMI owner, e.g. '136693071363'"))
        if not self.base_image.name_filter:
            problems.append(("base_image.name_filter", "required for AWS: e.g. 'debian-12-amd64-*'"))
        # A versioned tag without a digest is accepted: build-ami resolves its digest on the host before the bake
        # (infra/aws/image_digest.py) and bakes and fingerprints the pinned reference.
        image = parse_image_reference(self.nextcloud.image)
        if image.digest is None and image.tag is None:
            problems.append(
                (
                    "nextcloud.image",
                    f"{self.nextcloud.image!r} is not pinned by digest and has no tag; an AWS environment needs "
                    "repo:tag@sha256:<64 hex> or a versioned repo:tag whose digest build-ami resolves "
                    "(find it with `docker buildx imagetools inspect nextcloud:TAG`)",
                )
            )
        elif image.tag is None:
            problems.append(
                (
                    "nextcloud.image",
                    f"{self.nextcloud.image!r} is pinned by digest but has no tag; write "
                    f"{image.repository}:{self.nextcloud.version}-apache@sha256:{image.digest} (the tag says which "
                    "release the digest is, and is checked against nextcloud.version)",
                )
            )
        elif image.tag_version is None:
            problems.append(
                (
                    "nextcloud.image",
                    f"floating tag {image.tag!r}; use a versioned tag such as "
                    f"{self.nextcloud.version}-apache with its digest",
                )
            )
        if self.docker.version == "debian":
            problems.append(("docker.version", "an AWS environment pins docker-ce, e.g. 5:27.3.1-1~debian.12~bookworm"))
        if not self.s3.bucket:
            problems.append(("s3.bucket", "required for AWS: the primary object storage bucket"))
        if not self.database.ca_bundle_sha256:
            problems.append(("database.ca_bundle_sha256", "required for AWS (verify-full to RDS): the sha256 of "
                             f"the CA bundle, `curl -fsSL {self.database.ca_bundle_url} | sha256sum`"))
        for field in Secrets.model_fields:
            ref = classify(getattr(self.secrets, field))
            if ref.kind == "literal" and ref.literal:
                problems.append(
                    (
                        f"secrets.{field}",
                        "literal secrets are only allowed in the local environment; store the value in Secrets Manager "
                        "or SSM and reference it (arn:aws:secretsmanager:… or ssm:/…)",
                    )
                )
        if not self.bake.subnet_id:
            problems.append(("bake.subnet_id", "required for AWS: the subnet the bake instance runs in, e.g. "
                             "'subnet-0123456789abcdef0' (the stack's BakeSubnetId output)"))
        if not self.launch_template.name:
            problems.append(("launch_template.name", "required for AWS: the launch template the rollout versions"))
        if not self.autoscaling.group_name:
            problems.append(("autoscaling.group_name", "required for AWS: the Auto Scaling group to refresh"))
        if problems:
            raise FieldProblems(problems)
        return self

    @model_validator(mode="after")
    def _connection_budget(self) -> Settings:
        # The fleet at its largest must fit the database's max_connections (render/capacity.py); only AWS
        # environments have a stack whose group and database these settings size.
        problems = capacity.budget_problems(self) if self.builder == "aws" else []
        if problems:
            raise FieldProblems(problems)
        return self


def _port_ok(port: str | None) -> bool:
    return port is None or (port.isdigit() and 1 <= int(port) <= 65535)


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Loaded:
    """Validated settings plus where they came from (for messages and provenance) and warnings to show the user."""

    settings: Settings
    path: Path
    origins: Mapping[str, str]
    warnings: tuple[str, ...] = ()


def environment_path(root: Path, env: str) -> Path:
    return root / ENVIRONMENTS_DIR / f"{env}.toml"


def available_environments(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / ENVIRONMENTS_DIR).glob("*.toml"))


def parse_value(raw: str, where: str = "value") -> Any:
    """Parse an override the way TOML would (numbers, booleans, arrays, quoted strings); else keep the string.

    Raises SettingsError (naming ``where``) only for a value nested too deeply to parse.
    """
    try:
        return _parse_toml_value(raw, where)
    except TomlProblem as exc:
        raise SettingsError(where, exc.problems) from None


def _how_to_write(origin: str) -> str:
    if origin.startswith(ENV_PREFIX):
        return "write NCIMAGE_SECTION__KEY=value, e.g. NCIMAGE_DATABASE__PORT=5433"
    if origin.startswith("--set"):
        return "write --set section.key=value, e.g. --set database.port=5433"
    return "use a dotted section.key"


def _set_path(data: dict[str, Any], dotted: str, value: Any, origin: str, origins: dict[str, str]) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise SettingsError(origin, [f"{dotted!r} (from {origin}): empty key segment; {_how_to_write(origin)}"])
    node = data
    for depth, part in enumerate(parts[:-1], start=1):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            section = ".".join(parts[:depth])
            raise SettingsError(
                origin,
                [f"{dotted} (from {origin}): {section} is a value, not a section; set {section} itself, "
                 f"or fix the key path ({_how_to_write(origin)})"],
            )
        node = child
    node[parts[-1]] = value
    origins[dotted] = origin


def env_overrides(environ: Mapping[str, str]) -> list[tuple[str, Any, str]]:
    """NCIMAGE_SECTION__KEY=value → ('section.key', parsed value, 'NCIMAGE_SECTION__KEY')."""
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            dotted = name[len(ENV_PREFIX) :].lower().replace("__", ".")
            found.append((dotted, parse_value(environ[name], f"{dotted} (from {name})"), name))
    return found


def flag_overrides(items: Iterable[str]) -> list[tuple[str, Any, str]]:
    """--set section.key=value → ('section.key', parsed value, '--set section.key')."""
    found = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            shown = reprlib.repr(item)
            raise SettingsError("--set", [f"{shown}: expected section.key=value, e.g. --set database.port=5433"])
        origin = f"--set {key.strip()}"
        found.append((key.strip(), parse_value(raw, f"{key.strip()} (from {origin})"), origin))
    return found


def load_settings(
    root: Path,
    env: str,
    *,
    environ: Mapping[str, str] | None = None,
    sets: Iterable[str] = (),
    overrides: Mapping[str, Any] | None = None,
    stack_pending: bool = False,
    today: date | None = None,
) -> Loaded:
    """Load and validate environment ``env`` from ``root/environments``, layering env vars, flags and overrides.

    ``overrides`` (dotted key → value) is for programs, e.g. test-ami's canary secrets; it wins over everything.
    ``stack_pending`` is for deploy-stack before the stack exists: what the stack will provide gets placeholders.
    ``today`` dates the end-of-life check of the pinned Nextcloud (default: the system date).
    Raises SettingsError naming each bad field and its fix; never writes anything.
    """
    path = environment_path(root, env)
    source = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,31}", env):
        raise SettingsError(
            "--env",
            [f"{reprlib.repr(env)} is not an environment name; use one of: {', '.join(available_environments(root))}"],
        )
    if not path.is_file():
        known = ", ".join(available_environments(root)) or "none"
        raise SettingsError(
            source,
            [
                f"no such environment file; known environments: {known} "
                f"(copy environments/example.toml to {source} to create one)"
            ],
        )
    try:
        data = parse_file(path.read_bytes())
    except TomlProblem as exc:
        raise SettingsError(source, exc.problems) from None

    origins: dict[str, str] = {}
    stack_file = outputs_path(root, env)
    try:
        stack = stack_layer(read_outputs(stack_file), data, source=source, outputs_source=_rel(stack_file, root),
                            known=has_setting, pending=stack_pending)
    except StackOutputsError as exc:
        raise SettingsError(source, exc.problems) from None
    layered = [*stack, *env_overrides(environ if environ is not None else os.environ), *flag_overrides(sets)]
    layered += [(k, v, "override") for k, v in (overrides or {}).items()]
    for dotted, value, origin in layered:
        _set_path(data, dotted, value, origin, origins)

    name = data.get("name")
    if isinstance(name, str) and name != env and "name" not in origins:
        raise SettingsError(source, [f"name: is {reprlib.repr(name)} but the file is {env}.toml; make them match"])
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(source, _explain(exc, data, origins)) from None
    warnings = nextcloud_releases.support_warnings(settings.nextcloud.version, today or date.today())
    return Loaded(settings=settings, path=path, origins=origins, warnings=tuple(warnings))


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def has_setting(dotted: str) -> bool:
    """Does the settings model have this dotted key (``database.host``)?"""
    *sections, leaf = dotted.split(".")
    model = _model_for(tuple(sections))
    return model is not None and leaf in model.model_fields


def _model_for(path: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Settings
    for part in path:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        sections = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not sections:
            return None
        model = sections[0]
    return model


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 3, 80, 80, 6, 6


def _shown(loc: tuple[Any, ...], value: Any) -> str:
    """A bad value as a message may show it: shortened, and never the value of a secret."""
    if loc and loc[0] == "secrets":
        return type(value).__name__
    return f"{type(value).__name__} {_SHORT.repr(value)}"


def _env_name_hint(origin: str | None) -> str:
    """For NCIMAGE_DATABASE_PORT: the double-underscore spelling of a variable whose key is unknown."""
    if not origin or not origin.startswith(ENV_PREFIX) or "__" in origin:
        return ""
    words = origin[len(ENV_PREFIX) :].split("_")
    for i in range(1, len(words)):
        section, key = "_".join(words[:i]).lower(), "_".join(words[i:]).lower()
        model = _model_for((section,))
        if model is not None and key in model.model_fields:
            return f" (NCIMAGE_ variables separate section and key with a double underscore: {ENV_PREFIX}" \
                   f"{'_'.join(words[:i])}__{'_'.join(words[i:])})"
    return " (NCIMAGE_ variables separate section and key with a double underscore: NCIMAGE_SECTION__KEY)"


def _quote_hint(loc: tuple[Any, ...], origin: str | None, value: Any) -> str:
    """A number, boolean or date where a string belongs (34.0, 123456789012): say how to write it as a string."""
    if isinstance(value, str | dict | list):
        return ""
    if loc and loc[0] == "secrets":
        return f"; write the reference as a quoted string: {FORMS_HELP}"
    if origin and origin.startswith((ENV_PREFIX, "--set")):
        return f"; the value was read as TOML: quote it to keep a string, e.g. {origin}='\"{value}\"'"
    if not loc or origin:
        return ""
    return f'; quote it to make it a string: "{value}"' if isinstance(loc[-1], int) else (
        f'; quote it to make it a string: {loc[-1]} = "{value}"'
    )


def _explain(exc: ValidationError, data: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """Turn pydantic's errors into one line each: field, problem, fix."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, FieldProblems):
            prefix = "".join(f"{p}." for p in loc)
            lines.extend(f"{prefix}{f}: {m}" for f, m in ctx_error.problems)
            continue
        item = next((p for p in loc if isinstance(p, int)), None)
        dotted = ".".join(str(p) for p in loc if not isinstance(p, int)) or "(file)"
        origin = origins.get(dotted)
        if item is not None:
            dotted += f" (item {item + 1})"
        where = f" (from {origin})" if origin else ""
        kind = err["type"]
        if kind == "missing":
            parent = ".".join(str(p) for p in loc[:-1])
            section = f"under [{parent}]" if parent else "at the top of the file"
            lines.append(
                f"{dotted}: required field is missing; add `{loc[-1]} = …` {section} (see environments/example.toml)"
            )
        elif kind == "extra_forbidden":
            parent_model = _model_for(loc[:-1])
            known = sorted(parent_model.model_fields) if parent_model else []
            guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {guess[0]!r}? " if guess else ""
            lines.append(
                f"{dotted}{where}: unknown key; {hint}remove it (known keys here: {', '.join(known)})"
                + _env_name_hint(origin)
            )
        elif kind == "model_type":
            lines.append(
                f"{dotted}{where}: must be a table ([{dotted}] section), not {type(err['input']).__name__}"
            )
        elif kind == "literal_error":
            lines.append(
                f"{dotted}{where}: {err['msg'].replace('Input should be', 'must be')}; got {_shown(loc, err['input'])}"
            )
        elif kind == "value_error":
            lines.append(f"{dotted}{where}: {str(ctx_error or err['msg']).removeprefix('Value error, ')}")
        elif kind.endswith("_type") or kind.endswith("_parsing"):
            want = err["msg"].replace("Input should be", "must be")
            hint = _quote_hint(loc, origin, err["input"]) if kind == "string_type" else ""
            lines.append(f"{dotted}{where}: {want}; got {_shown(loc, err['input'])}{hint}")
        else:
            want = err["msg"].replace("Input should be", "must be")
            lines.append(f"{dotted}{where}: {want}; got {_shown(loc, err['input'])}")
    return lines
