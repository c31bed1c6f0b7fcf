"""Find and remove what failed bakes and canaries left behind — only resources carrying this project's tags.

A leftover is a resource tagged MANAGED=true, ENVIRONMENT=<env> and PURPOSE=bake|canary (render/tags.py):
instances, volumes, key pairs and security groups of a run, and AMIs (with their snapshots) whose bake never
completed (a finished bake removes PURPOSE from its AMIs). The same code removes one run's resources when that
run fails or is interrupted (``run_id``), and everything older than an age for ``inv sweep``.

Every candidate's tags are checked again here, after AWS's own tag filters: a resource without this project's
tags is never touched, whatever a filter returned.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError, WaiterError

from infra.aws.ami import snapshots_of, tag_dict, tag_filters
from infra.aws.session import Aws, AwsError, describe_client_error
from infra.aws.throwaway import run_started
from render import tags as T

Log = Callable[[str], None]
PURPOSES = (T.PURPOSE_BAKE, T.PURPOSE_CANARY)
# Removal order: instances hold volumes, network interfaces and security groups; AMIs hold their snapshots.
KINDS = ("instance", "volume", "key-pair", "security-group", "image", "snapshot")
_AGE = re.compile(r"(?P<n>\d+)(?P<unit>[smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``6h``, ``90m``, ``2d``, ``1w``, ``0s`` → timedelta; ValueError naming the fix otherwise."""
    m = _AGE.fullmatch((text or "").strip())
    if not m:
        raise ValueError(f"--older-than {text!r}: write a number and a unit, e.g. 6h, 90m, 2d (s, m, h, d, w)")
    return timedelta(**{_UNITS[m["unit"]]: int(m["n"])})


@dataclass(frozen=True)
class Leftover:
    region: str
    kind: str
    resource_id: str
    name: str
    run: str
    purpose: str
    created: datetime | None
    snapshots: tuple[str, ...] = ()  # an image's own snapshots, removed with it

    def age(self, now: datetime) -> timedelta | None:
        when = self.created or run_started(self.run)
        return now - when if when else None

    def line(self, now: datetime) -> str:
        age = self.age(now)
        shown = f"{age.total_seconds() / 3600:.1f} h old" if age is not None else "age unknown"
        extra = f" + snapshots {', '.join(self.snapshots)}" if self.snapshots else ""
        return f"{self.region} {self.kind} {self.resource_id} ({self.purpose}, run {self.run}, {shown}){extra}"


def _created(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            return None
    return None


def _ours(tags: dict[str, str], env: str, run_id: str | None) -> bool:
    return (
        tags.get(T.MANAGED) == "true" and tags.get(T.ENVIRONMENT) == env and tags.get(T.PURPOSE) in PURPOSES
        and (run_id is None or tags.get(T.RUN) == run_id)
    )


def find_leftovers(
    aws: Aws, env: str, regions: Iterable[str], *, run_id: str | None = None, older_than: timedelta | None = None,
    kinds: Sequence[str] = KINDS, now: datetime | None = None,
) -> list[Leftover]:
    """This project's throwaway resources of ``env`` in ``regions`` (one run's, with ``run_id``), at least
    ``older_than`` old (by AWS's creation time, else the run id's start time; unknown ages only without an age)."""
    now = now or datetime.now(UTC)
    more: dict[str, str | list[str]] = {T.PURPOSE: list(PURPOSES)}
    if run_id:
        more[T.RUN] = run_id
    filters = tag_filters(env, **more)
    found: list[Leftover] = []
    for region in dict.fromkeys(regions):
        ec2 = aws.client("ec2", region)
        raw: list[tuple[str, dict[str, Any], str, Any, tuple[str, ...]]] = []
        if "instance" in kinds:
            states = {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
            for page in ec2.get_paginator("describe_instances").paginate(Filters=[*filters, states]):
                for reservation in page.get("Reservations", []):
                    raw += [("instance", i, i["InstanceId"], i.get("LaunchTime"), ())
                            for i in reservation.get("Instances", [])]
        if "volume" in kinds:
            for page in ec2.get_paginator("describe_volumes").paginate(Filters=filters):
                raw += [("volume", v, v["VolumeId"], v.get("CreateTime"), ()) for v in page.get("Volumes", [])]
        if "key-pair" in kinds:
            raw += [("key-pair", k, k["KeyName"], k.get("CreateTime"), ())
                    for k in ec2.describe_key_pairs(Filters=filters).get("KeyPairs", [])]
        if "security-group" in kinds:
            for page in ec2.get_paginator("describe_security_groups").paginate(Filters=filters):
                raw += [("security-group", g, g["GroupId"], None, ()) for g in page.get("SecurityGroups", [])]
        image_snapshots: set[str] = set()
        if "image" in kinds:
            bake_filters = tag_filters(env, **{**more, T.PURPOSE: T.PURPOSE_BAKE})
            for image in ec2.describe_images(Owners=["self"], Filters=bake_filters).get("Images", []):
                snaps = tuple(snapshots_of(image))
                image_snapshots.update(snaps)
                raw.append(("image", image, image["ImageId"], image.get("CreationDate"), snaps))
        if "snapshot" in kinds:
            bake_filters = tag_filters(env, **{**more, T.PURPOSE: T.PURPOSE_BAKE})
            for page in ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=bake_filters):
                raw += [("snapshot", s, s["SnapshotId"], s.get("StartTime"), ())
                        for s in page.get("Snapshots", []) if s["SnapshotId"] not in image_snapshots]
        for kind, resource, resource_id, created, snaps in raw:
            tags = tag_dict(resource)
            if not _ours(tags, env, run_id):
                continue
            item = Leftover(region, kind, resource_id, tags.get("Name", ""), tags.get(T.RUN, ""),
                            tags.get(T.PURPOSE, ""), _created(created), snaps)
            age = item.age(now)
            if older_than is not None and older_than > timedelta(0) and (age is None or age < older_than):
                continue
            found.append(item)
    return sorted(found, key=lambda i: (KINDS.index(i.kind), i.region, i.resource_id))


@dataclass
class Removal:
    removed: list[Leftover]
    failed: list[tuple[Leftover, str]]


def remove_leftovers(aws: Aws, leftovers: Sequence[Leftover], log: Log, *, wait_s: float = 900) -> Removal:
    """Remove ``leftovers`` in dependency order; a failure on one is reported and the rest still go."""
    result = Removal([], [])
    by_kind = {kind: [i for i in leftovers if i.kind == kind] for kind in KINDS}

    def attempt(item: Leftover, call: Callable[[], Any]) -> None:
        try:
            call()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code.endswith(".NotFound") or code in ("InvalidGroup.NotFound", "InvalidKeyPair.NotFound"):
                result.removed.append(item)  # gone already: nothing left behind
                return
            result.failed.append((item, describe_client_error(exc)))
            log(f"  could not remove {item.kind} {item.resource_id} ({item.region}): {describe_client_error(exc)}")
            return
        result.removed.append(item)
        log(f"  removed {item.kind} {item.resource_id} ({item.region})")

    instances: dict[str, list[Leftover]] = {}
    for item in by_kind["instance"]:
        instances.setdefault(item.region, []).append(item)
    for region, items in instances.items():
        ec2 = aws.client("ec2", region)
        ids = [i.resource_id for i in items]
        try:
            ec2.terminate_instances(InstanceIds=ids)
            delay = 10
            ec2.get_waiter("instance_terminated").wait(
                InstanceIds=ids, WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(wait_s // delay))}
            )
        except (ClientError, WaiterError) as exc:
            for item in items:
                result.failed.append((item, str(exc)))
            log(f"  could not terminate {', '.join(ids)} ({region}): {exc}")
            continue
        for item in items:
            result.removed.append(item)
            log(f"  removed instance {item.resource_id} ({region})")
    for item in by_kind["volume"]:
        attempt(item, lambda i=item: _delete_volume(aws, i))
    for item in by_kind["key-pair"]:
        attempt(item, lambda i=item: aws.client("ec2", i.region).delete_key_pair(KeyName=i.resource_id))
    for item in by_kind["security-group"]:
        attempt(item, lambda i=item: _delete_security_group(aws, i, wait_s=min(wait_s, 120)))
    for item in by_kind["image"]:
        # DeleteAssociatedSnapshots is the API's own way; the snapshots are deleted explicitly as well, because
        # older endpoints (and the emulator) ignore it, and DeregisterImage alone keeps them.
        attempt(item, lambda i=item: aws.client("ec2", i.region).deregister_image(
            ImageId=i.resource_id, DeleteAssociatedSnapshots=True))
        for snap in item.snapshots:
            attempt(
                Leftover(item.region, "snapshot", snap, item.name, item.run, item.purpose, item.created),
                lambda s=snap, i=item: aws.client("ec2", i.region).delete_snapshot(SnapshotId=s),
            )
    for item in by_kind["snapshot"]:
        attempt(item, lambda i=item: aws.client("ec2", i.region).delete_snapshot(SnapshotId=i.resource_id))
    return result


def _delete_security_group(aws: Aws, item: Leftover, *, wait_s: float) -> None:
    """DeleteSecurityGroup; a just-terminated instance's network interface can hold the group for a little while
    (DependencyViolation) and AWS has no waiter for that: bounded polling, every 5 s."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            aws.client("ec2", item.region).delete_security_group(GroupId=item.resource_id)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "DependencyViolation" or time.monotonic() > deadline:
                raise
        time.sleep(5)


def _delete_volume(aws: Aws, item: Leftover) -> None:
    ec2 = aws.client("ec2", item.region)
    volumes = ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [item.resource_id]}]).get("Volumes", [])
    if not volumes or volumes[0].get("State") in ("deleting", "deleted"):
        return  # went with its instance (DeleteOnTermination)
    ec2.delete_volume(VolumeId=item.resource_id)


def sweep(
    aws: Aws, settings: Any, *, older_than: timedelta, remove: bool, log: Log, now: datetime | None = None
) -> tuple[list[Leftover], Removal | None]:
    """``inv sweep``: list (and with ``remove`` remove) the environment's leftovers older than ``older_than``."""
    now = now or datetime.now(UTC)
    regions = [settings.region, *settings.ami.regions]
    leftovers = find_leftovers(aws, settings.name, regions, older_than=older_than, now=now)
    hours = older_than.total_seconds() / 3600
    log(f"sweep {settings.name}: {len(leftovers)} leftover(s) at least {hours:g} h old in {', '.join(regions)}")
    for item in leftovers:
        log(f"  {item.line(now)}")
    if not remove or not leftovers:
        return leftovers, None
    return leftovers, remove_leftovers(aws, leftovers, log)


def _untagged_images_of_run(aws: Aws, settings: Any, regions: Sequence[str], run_id: str, image_name: str):
    """The AMIs a bake registered before Packer tagged them: the final copies carry the run's unique AMI name;
    an intermediate one (Packer names it at random when encrypt_boot copies; the template no longer sets it, but a
    bake of an older commit may have left one) is found through its snapshot,
    whose description AWS writes as "Created by CreateImage(<the run's instance>) for ami-…"."""
    from infra.aws.ami import images_named

    ec2 = aws.client("ec2")
    instances = [
        i["InstanceId"]
        for page in ec2.get_paginator("describe_instances").paginate(Filters=tag_filters(settings.name, **{
            T.RUN: run_id, T.PURPOSE: T.PURPOSE_BAKE}))
        for reservation in page.get("Reservations", []) for i in reservation.get("Instances", [])
    ]
    candidates: dict[tuple[str, str], dict[str, Any]] = {}
    orphans: list[dict[str, Any]] = []  # snapshots whose AMI Packer deregistered before it was stopped
    for instance_id in instances:
        made = ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            {"Name": "description", "Values": [f"Created by CreateImage({instance_id}) for ami-*"]}]).get(
            "Snapshots", [])
        for snapshot in made:
            image_id = snapshot.get("Description", "").rsplit(" for ", 1)[-1]
            try:
                images = ec2.describe_images(Owners=["self"], ImageIds=[image_id]).get("Images", [])
            except ClientError as exc:
                if "InvalidAMIID" not in exc.response.get("Error", {}).get("Code", ""):
                    raise
                images = []
            if images:
                candidates[(settings.region, image_id)] = images[0]
            elif not tag_dict(snapshot) or tag_dict(snapshot).get(T.RUN) == run_id:
                orphans.append(snapshot)
    for region in regions:
        for image in images_named(aws, region, image_name):
            candidates[(region, image["ImageId"])] = image
    for (region, _), image in sorted(candidates.items()):
        tags = tag_dict(image)
        if tags and tags.get(T.RUN) != run_id:
            continue  # tagged by someone else: not this run's to remove
        yield Leftover(region, "image", image["ImageId"], image.get("Name", ""), run_id, T.PURPOSE_BAKE,
                       _created(image.get("CreationDate")), tuple(snapshots_of(image)))
    for snapshot in orphans:
        yield Leftover(settings.region, "snapshot", snapshot["SnapshotId"], "", run_id, T.PURPOSE_BAKE,
                       _created(snapshot.get("StartTime")))


def remove_run(aws: Aws, settings: Any, run_id: str, log: Log, *, image_name: str | None = None) -> Removal:
    """Everything run ``run_id`` left behind in the environment's regions: its tagged resources, and (a bake)
    the AMIs it registered before Packer tagged them (see ``_untagged_images_of_run``)."""
    regions = [settings.region, *settings.ami.regions]
    leftovers = find_leftovers(aws, settings.name, regions, run_id=run_id)
    if image_name:
        seen = {(i.region, i.resource_id) for i in leftovers}
        leftovers += [i for i in _untagged_images_of_run(aws, settings, regions, run_id, image_name)
                      if (i.region, i.resource_id) not in seen]
    if not leftovers:
        log("  nothing of this run is left in AWS")
        return Removal([], [])
    return remove_leftovers(aws, leftovers, log)


def summary(removal: Removal | None) -> str:
    if removal is None:
        return "nothing removed"
    parts = [f"removed {len(removal.removed)}"]
    if removal.failed:
        parts.append(f"{len(removal.failed)} could not be removed")
    return ", ".join(parts)


def sweep_environment(settings: Any, *, older_than: str, remove: bool, dry_run: bool = False, log: Log = print,
                      confirm: Callable[[str], bool] | None = None):
    """``inv sweep``: preflight, list, and remove (``remove``: --yes, without asking; else when ``confirm`` says
    yes; never in a dry run); returns the verdict."""
    from infra.verdict import Verdict

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise AwsError(f"{exc}; nothing was changed") from None
    aws = Aws.for_settings(settings, dry_run=dry_run)
    identity = aws.preflight()
    log(f"aws: account {identity.account}, environment {settings.name}" + (" (dry run)" if dry_run else ""))
    leftovers, _ = sweep(aws, settings, older_than=age, remove=False, log=log)
    if not leftovers:
        return Verdict("clean", f"nothing of {settings.name} older than {older_than} is left behind")
    if dry_run or not (remove or confirm):
        how = "a dry run removes nothing" if dry_run else "run again with --yes to remove them"
        return Verdict("listed", f"{len(leftovers)} leftover(s) older than {older_than}; {how}")
    if not remove and not (confirm and confirm(f"remove these {len(leftovers)} leftover(s) of {settings.name}?")):
        return Verdict("not confirmed", f"{len(leftovers)} leftover(s) listed; nothing was removed", 2)
    removal = remove_leftovers(aws, leftovers, log)
    if removal.failed:
        return Verdict("incomplete", f"{summary(removal)}; see above", exit_code=1)
    # Removal counts an AMI's snapshots one by one; so must the total it is compared with.
    total = sum(1 + len(item.snapshots) for item in leftovers)
    what = f"{total} leftover(s)" if total == len(leftovers) else \
        f"{total} resource(s) ({len(leftovers)} leftover(s) and their AMIs' snapshots)"
    return Verdict("swept", f"{summary(removal)} of {what} older than {older_than}")
