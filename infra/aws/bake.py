"""``inv build-ami`` for AWS environments: resolve, reuse or bake, finish, record.

1. preflight (credentials, region, account), the bake subnet exists;
2. resolved on the host: the newest available source AMI of the selector (id + name), the Nextcloud digest when
   the settings give only a tag; rendered with them (render.outputs.ResolvedInputs), so the fingerprint covers
   the exact base and image that will be baked;
3. reuse: a finished AMI of this account with the same fingerprint in the environment's region and each copy
   region → answered in seconds, nothing launched, Packer not started;
4. otherwise: a key pair and a security group for this run (SSH only from the build host), Packer's amazon-ebs
   source with the exact source AMI and the EC2 endpoint boto3 uses, its manifest entry of this run
   (``packer_run_uuid == last_run_uuid``), then IMDSv2 and every tag on each AMI and snapshot in each region, the
   optional SSM parameter, ``build/<env>/manifest.json``;
5. on any failure or Ctrl-C: what this run left in AWS (found by its run tag, and its AMIs by their unique name) is
   removed and listed.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from infra import build_record
from infra.aws import ami as amis
from infra.aws import throwaway
from infra.aws.image_digest import DigestError, resolve_image_digest
from infra.aws.session import Aws, AwsError, describe_client_error
from infra.aws.sweep import remove_run, summary
from infra.packer import PackerError, ensure_plugins, run_packer_build
from infra.verdict import Verdict
from render import tags as T
from render.outputs import FINGERPRINT, PACKER_VARS, ResolvedInputs, render_all, stage_image_upload, write_outputs

Log = Callable[[str], None]


def ami_name(settings: Any, fingerprint: str, build_time: str) -> str:
    """The AMI name the template gives (local.ami_name): unique per account and region, so a failed run's
    untagged AMI is still found by it."""
    stamp = datetime.strptime(build_time, "%Y-%m-%dT%H:%M:%SZ").strftime("%Y%m%d%H%M%S")
    return f"{settings.ami.name_prefix}-{fingerprint[:12]}-{stamp}"


def packer_only(settings: Any) -> str:
    return "amazon-ebs.emulator" if settings.bake.communicator == "none" else "amazon-ebs.nextcloud"


def _packer_credentials(aws: Aws) -> dict[str, str]:
    """The preflighted identity, handed to Packer through its environment (never argv): Debian's Packer 1.6.6 is
    older than SSO profiles, and Packer must act as the identity the preflight checked."""
    assert aws.session is not None
    creds = aws.session.get_credentials()
    if creds is None:
        return {}
    frozen = creds.get_frozen_credentials()
    env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
    if frozen.token:
        env["AWS_SESSION_TOKEN"] = frozen.token
    return env


def _resolve(aws: Aws, root: Path, settings: Any, resolve_image: Callable[[str], str], log: Log):
    source = amis.resolve_source_ami(aws, settings.base_image.owner, settings.base_image.name_filter)
    log(f"source AMI: {source.image_id} {source.name} ({source.creation_date})")
    try:
        nextcloud_image = resolve_image(settings.nextcloud.image)
    except DigestError as exc:
        raise AwsError(str(exc)) from None
    if nextcloud_image != settings.nextcloud.image:
        log(f"nextcloud image: {settings.nextcloud.image} resolved to {nextcloud_image}")
    files = render_all(root, settings, ResolvedInputs(source.image_id, source.name, nextcloud_image))
    return source, nextcloud_image, files


def _reused_manifest(aws: Aws, settings: Any, found: dict[str, str], fingerprint: str) -> dict[str, Any]:
    image = amis.describe_image(aws, settings.region, found[settings.region])
    tags = amis.tag_dict(image)
    return {
        "artifact_id": found[settings.region],
        "region": settings.region,
        "amis": found,
        "name": image.get("Name", ""),
        "fingerprint": fingerprint,
        "reused": True,
        "built_at": tags.get(T.BUILD_TIME, ""),
        "git_sha": tags.get(T.GIT_SHA, ""),
        "base_image": tags.get(T.SOURCE_AMI, ""),
        "base_image_name": tags.get(T.SOURCE_AMI_NAME, ""),
        "nextcloud_image": tags.get(T.NEXTCLOUD_IMAGE, ""),
        "nextcloud_version": tags.get(T.NEXTCLOUD_VERSION, ""),
        "docker_version": tags.get(T.DOCKER_VERSION, ""),
        "run_id": tags.get(T.RUN, ""),
        "packer_run_uuid": None,
    }


def build_aws_image(
    root: Path,
    settings: Any,
    *,
    dry_run: bool = False,
    force: bool = False,
    log: Log = print,
    packer: str = "packer",
    resolve_image: Callable[[str], str] = resolve_image_digest,
    build_root: Path | None = None,
) -> Verdict:
    """Bake (or reuse) the AMI of an AWS environment; see the module docstring. Returns the verdict; raises
    AwsError for a refusal (nothing changed) and for a failed bake (after removing what it left)."""
    started = time.monotonic()
    build_dir = build_record.build_dir(root, settings.name, build_root)
    aws = Aws.for_settings(settings, dry_run=dry_run)
    identity = aws.preflight()
    log(f"aws: account {identity.account} as {identity.arn}, region {settings.region}"
        + (f" (+ copies in {', '.join(settings.ami.regions)})" if settings.ami.regions else "")
        + (" — dry run: nothing will be changed" if dry_run else ""))
    endpoint = aws.custom_endpoint("ec2")
    if settings.bake.communicator == "none" and endpoint is None:
        raise AwsError(
            "bake.communicator = 'none' bakes without provisioning and is meant only for an AWS emulator "
            "(AWS_ENDPOINT_URL set); against AWS it would register an unprovisioned image: remove the setting; "
            "nothing was changed"
        )
    vpc_id = throwaway.subnet_vpc(aws, settings.bake.subnet_id, "bake.subnet_id")
    source, nextcloud_image, files = _resolve(aws, root, settings, resolve_image, log)
    fingerprint = files[FINGERPRINT].strip()
    resolved_s = round(time.monotonic() - started, 2)
    log(f"fingerprint {fingerprint}")

    found = None if force else amis.find_reusable(aws, settings, fingerprint)
    if found:
        manifest = _reused_manifest(aws, settings, found, fingerprint)
        manifest["timings"] = {"total_seconds": round(time.monotonic() - started, 2)}
        if not dry_run:
            write_outputs(build_dir, files)
            build_record.write(build_dir, manifest, sort_keys=True)
        copies = ", ".join(f"{r}:{i}" for r, i in found.items())
        return Verdict("reused", f"{found[settings.region]} has fingerprint {fingerprint[:12]} ({copies}); "
                                 f"no bake started, {manifest['timings']['total_seconds']:.1f} s")

    cidrs = [] if settings.bake.communicator == "none" else throwaway.build_host_cidrs(settings)
    only = packer_only(settings)
    if dry_run:
        log("would bake (no finished AMI has this fingerprint):")
        log(f"  key pair + security group in {vpc_id} (subnet {settings.bake.subnet_id}), SSH from "
            f"{', '.join(cidrs) or 'nowhere'} ({settings.bake.ssh_interface})")
        log(f"  packer build -only={only} from {source.image_id}, nextcloud image {nextcloud_image}")
        log(f"  copies in {', '.join(settings.ami.regions) or 'no other region'}; ImdsSupport=v2.0 and tags on "
            "every AMI and snapshot" + (f"; SSM parameter {settings.ami.ssm_parameter}"
                                        if settings.ami.ssm_parameter else ""))
        return Verdict("dry run", f"would bake fingerprint {fingerprint[:12]} from {source.image_id}; "
                                  "nothing was changed")

    write_outputs(build_dir, files)
    for line in ensure_plugins(packer, log=log):
        log(f"installed Packer plugin {line}")
    run_id = throwaway.new_run_id()
    build_time = throwaway.utc_now_iso()
    name = ami_name(settings, fingerprint, build_time)
    git_sha = build_record.git_sha()
    tags = amis.image_tags(settings, fingerprint=fingerprint, git_sha=git_sha, build_time=build_time,
                           source=source, nextcloud_image=nextcloud_image, ami_name=name, run_id=run_id)
    run_tags = amis.throwaway_tags(settings, purpose=T.PURPOSE_BAKE, run_id=run_id, name=f"nextcloud-bake-{name}")
    created = throwaway.Created()
    log(f"bake run {run_id}: {name}")
    timings: dict[str, Any] = {"resolve_seconds": resolved_s}
    try:
        with tempfile.TemporaryDirectory(prefix="ncimage-bake-") as tmp:
            work = Path(tmp)
            key_name, key_file = throwaway.import_key_pair(
                aws, settings, run_id=run_id, purpose=T.PURPOSE_BAKE, workdir=work, created=created, log=log)
            group_id = throwaway.create_security_group(
                aws, settings, vpc_id=vpc_id, run_id=run_id, purpose=T.PURPOSE_BAKE, ssh_cidrs=cidrs,
                created=created, log=log)
            tag_vars = work / "bake-tags.json"
            tag_vars.write_text(json.dumps({"ami_tags": tags, "run_tags": run_tags}, indent=2))
            # Packer uploads exactly the files the fingerprint covers (render/outputs.py IMAGE_UPLOAD).
            stage_image_upload(root, work / "image")
            variables = {
                "fingerprint": fingerprint, "git_sha": git_sha, "build_time": build_time,
                "build_dir": str(build_dir.resolve()), "ec2_endpoint": endpoint or "",
                "image_upload_dir": str(work / "image"),
                "subnet_id": settings.bake.subnet_id, "security_group_id": group_id,
                "ssh_keypair_name": key_name, "ssh_private_key_file": str(key_file),
                "ssh_interface": settings.bake.ssh_interface,
                "iam_instance_profile": settings.bake.instance_profile or "",
            }
            canaries = [f"canary-{secrets.token_hex(16)}" for _ in range(2)]
            t = time.monotonic()
            log(f"packer build -only={only} (source {source.image_id}) ...")
            result = run_packer_build(
                root / "packer", var_file=build_dir / PACKER_VARS, variables=variables,
                sensitive_variables={"validate_canaries": ",".join(canaries)}, only=only,
                manifest_path=build_dir / build_record.PACKER_MANIFEST, log=log, packer=packer, cwd=root,
                extra_args=[f"-var-file={tag_vars}"], manifest_name="nextcloud",
                extra_env={**_packer_credentials(aws), "PACKER_CACHE_DIR": str(build_dir.parent / "cache" / "packer")},
            )
            timings["packer_seconds"] = round(time.monotonic() - t, 2)
        found_amis = amis.parse_artifact_id(result.entry.artifact_id)
        expected = {settings.region, *settings.ami.regions}
        if set(found_amis) != expected:
            raise AwsError(f"Packer built {result.entry.artifact_id}, expected one AMI in each of {sorted(expected)}")
        t = time.monotonic()
        log("finishing every copy: IMDSv2 only, tags on the AMI and its snapshots")
        snapshots = amis.finish_images(aws, found_amis, tags, log)
        if settings.ami.ssm_parameter:
            amis.publish_parameter(aws, settings.ami.ssm_parameter, found_amis, log)
        timings["finish_seconds"] = round(time.monotonic() - t, 2)
    except BaseException as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else _describe(exc)
        log(f"bake run {run_id} failed ({reason}); removing what it left in AWS:")
        with throwaway.cleanup_shield(log):
            removal = remove_run(aws, settings, run_id, log, image_name=name)
        log(f"cleanup: {summary(removal)}")
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AwsError(f"the bake failed: {reason}; cleanup: {summary(removal)}", exit_code=1) from None

    log("removing the run's key pair and security group")
    removal = remove_run(aws, settings, run_id, log)
    timings["packer_steps"] = str(result.timings_path)
    timings["total_seconds"] = round(time.monotonic() - started, 2)
    manifest = {
        "artifact_id": found_amis[settings.region],
        "region": settings.region,
        "amis": found_amis,
        "snapshots": snapshots,
        "name": name,
        "fingerprint": fingerprint,
        "reused": False,
        "built_at": build_time,
        "git_sha": git_sha,
        "base_image": source.image_id,
        "base_image_name": source.name,
        "nextcloud_image": nextcloud_image,
        "nextcloud_version": settings.nextcloud.version,
        "docker_version": settings.docker.version,
        "imds_support": amis.IMDS_V2,
        "ssm_parameter": settings.ami.ssm_parameter,
        "run_id": run_id,
        "packer_run_uuid": result.entry.packer_run_uuid,
        "created": [{"region": r, "kind": k, "id": i} for r, k, i in created.items],
        "removed": [{"region": i.region, "kind": i.kind, "id": i.resource_id} for i in removal.removed],
        "timings": timings,
    }
    path = build_record.write(build_dir, manifest, sort_keys=True)
    log(f"manifest: {path}")
    copies = ", ".join(f"{r}:{i}" for r, i in found_amis.items())
    if removal.failed:
        return Verdict("built", f"{copies} in {timings['total_seconds']:.0f} s, but {summary(removal)}: "
                                "run `inv sweep`", exit_code=1)
    return Verdict("built", f"{copies}, fingerprint {fingerprint[:12]}, in {timings['total_seconds']:.0f} s")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return describe_client_error(exc)
    if isinstance(exc, (PackerError, AwsError, BotoCoreError)):
        # One line for the verdict, but all of it: Packer's reason follows "failed (exit 1):" on the next lines.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        if not lines:
            return type(exc).__name__
        head, rest = lines[0], lines[1:]
        return f"{head.rstrip(':')}: {'; '.join(rest)}" if rest else head
    return f"{type(exc).__name__}: {exc}"
