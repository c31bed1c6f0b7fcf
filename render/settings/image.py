"""What the image is baked from and how: the base, Nextcloud, the container engine, the AMI and the bake."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from render.rules import image_version_problem, parse_image_reference
from render.sections import FieldProblems, matching
from render.sections import Section as _Section
from render.settings.common import _REGION, _SSM_PARAMETER


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
