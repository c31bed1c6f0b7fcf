"""One environment as a whole: every section, and the rules across sections (AWS needs, the connection budget)."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, field_validator, model_validator

from render import capacity
from render.rules import parse_image_reference
from render.secret_refs import classify
from render.sections import FieldProblems, dotted_key
from render.sections import Section as _Section
from render.settings.common import _INSTANCE_TYPE, _NAME, _REGION
from render.settings.fleet import Autoscaling, LaunchTemplate, Rollout, Upgrade
from render.settings.image import Ami, Bake, BaseImage, Docker, Nextcloud
from render.settings.service import S3, Cluster, Database, Logs, Redis, Secrets, Site, Web
from render.stack_settings import Stack

DEBIAN_AMI_OWNER = "136693071363"  # the account that publishes Debian's official AMIs


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
        if self.bake.ssh_interface == "session_manager" and self.base_image.owner == DEBIAN_AMI_OWNER:
            problems.append(("bake.ssh_interface", "'session_manager' needs the SSM agent on the bake and canary "
                             f"instances; Debian's AMIs (base_image.owner = '{DEBIAN_AMI_OWNER}') do not carry it and "
                             "the bake does not install it, so Packer and test-ami could never connect: use "
                             "'public_ip', or 'private_ip' from a build host inside the VPC"))
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
