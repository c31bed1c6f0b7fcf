"""`inv check-updates`: is there anything new to bake, and does the group run what the tree would build?

Three questions, each answered from its source of truth, never from a cache:
- **source AMI**: the newest available image matching ``base_image.owner`` + ``name_filter`` (what a bake would
  start from) against the source AMI recorded on the AMI the group launches now;
- **Nextcloud**: the registry's tags for the pinned major.minor (a newer patch release), and whether the pinned tag
  now serves another digest than the one pinned (upstream rebuilt it, e.g. for base-OS fixes);
- **fingerprint**: the fingerprint of the current tree with the newest source AMI (exactly what ``build-ami``
  would compute) against the fingerprint tag of the AMI the group runs.

A newer source AMI or a different fingerprint means a bake (and a canary test and a rollout) is due: that is
automatic. A newer Nextcloud patch or a moved tag is an operator's change to ``nextcloud.image``/``version`` (a
new Nextcloud version needs ``inv upgrade``, never a blind rollout): it is reported, not acted on.

Exit codes a workflow branches on: 0 nothing new; 10 a bake is due; 11 only operator changes are available.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra.aws import ami as amis
from infra.aws.registry import RegistryClient, RegistryError, parse_reference
from infra.aws.session import Aws, AwsError, describe_client_error
from infra.stack.images import image_the_group_runs
from infra.verdict import Verdict
from render import tags as T
from render.outputs import FINGERPRINT, ResolvedInputs, render_all

EXIT_UP_TO_DATE = 0
EXIT_BAKE_DUE = 10
EXIT_OPERATOR_CHANGE = 11
_APACHE_TAG = re.compile(r"^(?P<version>\d+\.\d+\.\d+)-apache$")


@dataclass(frozen=True)
class Check:
    """One question and its answer."""

    name: str  # source-ami | nextcloud-patch | nextcloud-tag | fingerprint
    current: str
    available: str
    update: bool
    bake: bool  # True: a bake takes it in; False: the settings must change first
    detail: str


@dataclass
class UpdateReport:
    environment: str
    group_image: str | None
    checks: list[Check] = field(default_factory=list)

    @property
    def bake_due(self) -> bool:
        return any(c.update and c.bake for c in self.checks)

    @property
    def operator_changes(self) -> list[Check]:
        return [c for c in self.checks if c.update and not c.bake]

    def exit_code(self) -> int:
        if self.bake_due:
            return EXIT_BAKE_DUE
        return EXIT_OPERATOR_CHANGE if self.operator_changes else EXIT_UP_TO_DATE

    def as_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "group_image": self.group_image,
            "bake": self.bake_due,
            "operator_changes": [c.name for c in self.operator_changes],
            "exit_code": self.exit_code(),
            "checks": [asdict(c) for c in self.checks],
        }

    def verdict(self) -> Verdict:
        code = self.exit_code()
        if code == EXIT_BAKE_DUE:
            what = ", ".join(c.name for c in self.checks if c.update and c.bake)
            return Verdict("bake due", f"{what}: run build-ami, test-ami and rollout", code)
        if code == EXIT_OPERATOR_CHANGE:
            what = "; ".join(c.detail for c in self.operator_changes)
            return Verdict("settings update available", what, code)
        return Verdict("up to date", "the group runs what this tree would bake from the newest sources", code)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def newest_patch(tags: list[str], version: str) -> str | None:
    """The newest ``X.Y.Z-apache`` tag of the pinned major.minor (``version`` = X.Y.Z), or None."""
    major_minor = version.split(".")[:2]
    candidates = [m["version"] for t in tags if (m := _APACHE_TAG.match(t)) and m["version"].split(".")[:2]
                  == major_minor]
    return max(candidates, key=_version_key, default=None)


def _registry_client(aws: Aws, registry: str) -> RegistryClient:
    """ECR registries get the credentials ecr:GetAuthorizationToken hands out; every other one is anonymous."""
    match = re.fullmatch(r"(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com", registry)
    if not match:
        return RegistryClient(registry)
    import base64

    answer = aws.client("ecr", match[2]).get_authorization_token(registryIds=[match[1]])
    user, _, password = base64.b64decode(answer["authorizationData"][0]["authorizationToken"]).decode().partition(":")
    return RegistryClient(registry, basic_auth=(user, password))


def _nextcloud_checks(aws: Aws, settings: Any, client: RegistryClient | None) -> tuple[list[Check], str]:
    """The registry's view of the pinned image; returns the checks and the digest-pinned reference to bake."""
    pinned = settings.nextcloud.image
    ref = parse_reference(pinned)
    client = client or _registry_client(aws, ref.registry)
    checks = []
    try:
        tags = client.tags(ref.repository)
        latest = newest_patch(tags, settings.nextcloud.version)
        tag_digest = client.digest(ref.repository, ref.tag) if ref.tag else None
        latest_digest = client.digest(ref.repository, f"{latest}-apache") if latest else None
    except RegistryError as exc:
        raise AwsError(f"check-updates: {exc}", exit_code=1) from None
    if latest is None:
        raise AwsError(f"check-updates: {ref.name} has no {'.'.join(settings.nextcloud.version.split('.')[:2])}.x"
                       "-apache tag; check nextcloud.image", exit_code=1)
    newer = _version_key(latest) > _version_key(settings.nextcloud.version)
    repo = pinned.split("@", 1)[0].rsplit(":", 1)[0]
    checks.append(Check(
        "nextcloud-patch", settings.nextcloud.version, latest, newer, bake=False,
        detail=(f"Nextcloud {latest} is out: set nextcloud.image = \"{repo}:{latest}-apache@{latest_digest}\" and "
                f"nextcloud.version = \"{latest}\", bake, then `inv upgrade`") if newer else
        f"no newer {latest.rsplit('.', 1)[0]}.x release than {settings.nextcloud.version}",
    ))
    if ref.digest and tag_digest:
        moved = tag_digest != ref.digest
        checks.append(Check(
            "nextcloud-tag", ref.digest, tag_digest, moved, bake=False,
            detail=(f"{ref.tag} now serves {tag_digest[:19]}… (rebuilt upstream): pin "
                    f"\"{repo}:{ref.tag}@{tag_digest}\" to take it in") if moved else
            f"{ref.tag} still serves the pinned digest",
        ))
    baked = pinned if ref.digest else f"{repo}:{ref.tag}@{tag_digest}"
    return checks, baked


def check_updates(root: Path, settings: Any, aws: Aws, *, registry: RegistryClient | None = None) -> UpdateReport:
    """Answer the three questions for an AWS environment; read-only (nothing in AWS or on disk changes)."""
    aws.preflight()
    try:
        running = image_the_group_runs(aws, settings.autoscaling.group_name)
        running_tags = amis.tag_dict(amis.describe_image(aws, settings.region, running.image_id)) if running else {}
        newest = amis.resolve_source_ami(aws, settings.base_image.owner, settings.base_image.name_filter)
    except (ClientError, BotoCoreError) as exc:
        raise AwsError(f"check-updates: {describe_client_error(exc)}", exit_code=1) from None
    report = UpdateReport(settings.name, running.image_id if running else None)
    group = settings.autoscaling.group_name
    current_source = running_tags.get(T.SOURCE_AMI, "")
    report.checks.append(Check(
        "source-ami", current_source or "(no group yet)", newest.image_id,
        update=newest.image_id != current_source, bake=True,
        detail=f"newest {newest.name} ({newest.creation_date})"
        + ("" if newest.image_id == current_source else f"; the group {group} runs one built on "
           f"{current_source or 'nothing yet'}"),
    ))
    nextcloud, baked_image = _nextcloud_checks(aws, settings, registry)
    report.checks += nextcloud
    fingerprint = render_all(root, settings, ResolvedInputs(newest.image_id, newest.name, baked_image))[FINGERPRINT]
    fingerprint = fingerprint.strip()
    running_fp = running_tags.get(T.FINGERPRINT, "")
    report.checks.append(Check(
        "fingerprint", running_fp or "(no group yet)", fingerprint, update=fingerprint != running_fp, bake=True,
        detail="the tree and the newest sources bake the image the group runs" if fingerprint == running_fp else
        f"this tree would bake {fingerprint[:12]}, the group runs {running_fp[:12] or 'nothing yet'}",
    ))
    return report
