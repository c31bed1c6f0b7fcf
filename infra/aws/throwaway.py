"""The throwaway resources of a bake or a canary: run ids, the key pair, the security group, the build host's
address. Every one is tagged with the run (render/tags.py) when it is created, in the same call, so nothing
exists untagged even for a moment; that is how a run's leftovers are found and removed (infra/aws/sweep.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from infra.aws.ami import as_tag_list, throwaway_tags
from infra.aws.session import Aws, AwsError, describe_client_error

Log = Callable[[str], None]

# A run id starts with its UTC start time: the age of anything tagged with it is known even where AWS keeps no
# creation time (security groups).
_RUN_ID = re.compile(r"(?P<at>\d{8}T\d{6}Z)-[0-9a-f]{6}")
# What the build host's public address looks like from AWS (the service Packer's newer releases use too).
CHECKIP_URL = "https://checkip.amazonaws.com"


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: when the run started, and 24 random bits."""
    return f"{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


def run_started(run_id: str) -> datetime | None:
    """When the run ``run_id`` started, or None when the value is not a run id of this project."""
    m = _RUN_ID.fullmatch(run_id or "")
    return datetime.strptime(m["at"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if m else None


@contextlib.contextmanager
def cleanup_shield(log: Log) -> Iterator[None]:
    """A second Ctrl-C while a run cleans up would leave half of it behind: say so instead of stopping."""
    try:
        previous = signal.signal(signal.SIGINT, lambda *_: log("  (cleaning up; it ends by itself in a moment)"))
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def utc_now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_host_cidrs(settings: Any, fetch: Callable[[str], str] | None = None) -> list[str]:
    """Where SSH to a throwaway instance may come from: ``bake.ssh_source_cidrs``, or this host's public address
    as AWS sees it (/32). Session Manager needs no inbound rule at all (empty list)."""
    bake = settings.bake
    if bake.ssh_interface == "session_manager":
        return []
    if bake.ssh_source_cidrs:
        return list(bake.ssh_source_cidrs)
    if bake.ssh_interface == "private_ip":
        raise AwsError(
            "bake.ssh_interface = 'private_ip' means the build host is inside the VPC, where its public address "
            "says nothing: set bake.ssh_source_cidrs to its private address or subnet (e.g. ['10.0.5.17/32'])"
        )
    try:
        answer = (fetch or _fetch)(CHECKIP_URL).strip()
        address = ipaddress.ip_address(answer)
    except (OSError, ValueError) as exc:
        raise AwsError(
            f"cannot find this host's public address ({CHECKIP_URL}: {exc}): set bake.ssh_source_cidrs to it "
            "(e.g. ['203.0.113.7/32']) or use bake.ssh_interface = 'session_manager'"
        ) from None
    return [f"{address}/{address.max_prefixlen}"]


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a fixed https URL
        return resp.read(64).decode("ascii", "replace")


def subnet_vpc(aws: Aws, subnet_id: str, key: str) -> str:
    """The VPC of ``subnet_id``; a clear error naming the settings ``key`` when the subnet does not exist."""
    try:
        subnets = aws.client("ec2").describe_subnets(SubnetIds=[subnet_id]).get("Subnets", [])
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("InvalidSubnetID.NotFound", "InvalidSubnetID.Malformed"):
            subnets = []
        else:
            raise AwsError(f"cannot read subnet {subnet_id} ({describe_client_error(exc)})") from None
    if not subnets:
        raise AwsError(
            f"{key} = {subnet_id!r}: no such subnet in {aws.region}; set it to a subnet of the environment's VPC "
            "(the stack's outputs name them); nothing was changed"
        )
    return subnets[0]["VpcId"]


@dataclass
class Created:
    """What a run created, in order, for the report at its end."""

    items: list[tuple[str, str, str]] = field(default_factory=list)  # (region, kind, id)

    def add(self, region: str, kind: str, resource_id: str, log: Log) -> None:
        self.items.append((region, kind, resource_id))
        log(f"  created {kind} {resource_id} ({region})")


def import_key_pair(
    aws: Aws, settings: Any, *, run_id: str, purpose: str, workdir: Path, created: Created, log: Log
) -> tuple[str, Path]:
    """A fresh Ed25519 key made on this host; only its public half goes to AWS (ImportKeyPair, tagged)."""
    key = workdir / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"nextcloud-image-{purpose}-{run_id}", "-f", str(key)],
        check=True,
    )
    name = f"nextcloud-image-{purpose}-{settings.name}-{run_id}"
    tags = throwaway_tags(settings, purpose=purpose, run_id=run_id, name=name)
    aws.client("ec2").import_key_pair(
        KeyName=name, PublicKeyMaterial=(workdir / "id_ed25519.pub").read_bytes(),
        TagSpecifications=[{"ResourceType": "key-pair", "Tags": as_tag_list(tags)}],
    )
    created.add(aws.region, "key-pair", name, log)
    return name, key


def create_security_group(
    aws: Aws, settings: Any, *, vpc_id: str, run_id: str, purpose: str, ssh_cidrs: list[str], created: Created,
    log: Log,
) -> str:
    """A security group for one run: inbound SSH only from ``ssh_cidrs`` (none at all when empty)."""
    name = f"nextcloud-image-{purpose}-{settings.name}-{run_id}"
    tags = as_tag_list(throwaway_tags(settings, purpose=purpose, run_id=run_id, name=name))
    ec2 = aws.client("ec2")
    group_id = ec2.create_security_group(
        GroupName=name, VpcId=vpc_id, Description=f"nextcloud-image {purpose} {run_id}: SSH from the build host",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
    )["GroupId"]
    created.add(aws.region, "security-group", group_id, log)
    if ssh_cidrs:
        ranges = {"IpRanges": [], "Ipv6Ranges": []}
        for cidr in ssh_cidrs:
            v6 = ipaddress.ip_network(cidr).version == 6
            ranges["Ipv6Ranges" if v6 else "IpRanges"].append(
                {"CidrIpv6" if v6 else "CidrIp": cidr, "Description": "the build host"}
            )
        ec2.authorize_security_group_ingress(
            GroupId=group_id,
            IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                            **{k: v for k, v in ranges.items() if v}}],
            TagSpecifications=[{"ResourceType": "security-group-rule", "Tags": tags}],
        )
        log(f"  {group_id}: SSH (22/tcp) only from {', '.join(ssh_cidrs)}")
    return group_id
