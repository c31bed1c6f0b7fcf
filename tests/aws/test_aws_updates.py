"""`inv check-updates` against the emulator (Debian's AMIs, a real emulator bake, the group) and a real registry on
loopback (Debian's docker-registry) holding a few Nextcloud tags, pushed through the distribution API the way a
registry receives any image. Exit codes and JSON are what a workflow branches on."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest
from bake_support import (
    DEBIAN_CURRENT,
    DEBIAN_NEWER,
    ROOT,
    emulator_state,
    hide_newer_debian,
    make_group,
    publish_newer_debian,
    settings_for,
)

from infra import build_record
from infra.aws.bake import build_aws_image
from infra.aws.registry import RegistryClient, parse_reference
from infra.aws.session import Aws
from infra.aws.updates import EXIT_BAKE_DUE, EXIT_OPERATOR_CHANGE, EXIT_UP_TO_DATE, check_updates, newest_patch
from infra.localtwin.instance import free_port
from infra.localtwin.registry import LoopbackRegistry

pytestmark = [
    pytest.mark.skipif(shutil.which("docker-registry") is None, reason="docker-registry not installed"),
    pytest.mark.skipif(shutil.which("packer") is None, reason="packer not installed"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory):
    """The twin's loopback registry (Debian's docker-registry on 127.0.0.1) with its own storage and port."""
    with LoopbackRegistry(storage=tmp_path_factory.mktemp("registry"), port=free_port()) as reg:
        yield reg.address


def _upload(registry: str, repo: str, blob: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    start = urllib.request.Request(f"http://{registry}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(start) as resp:  # noqa: S310 - loopback
        location = resp.headers["Location"]
    location = location if location.startswith("http") else f"http://{registry}{location}"
    sep = "&" if "?" in location else "?"
    put = urllib.request.Request(f"{location}{sep}digest={digest}", method="PUT", data=blob,
                                 headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(put).close()  # noqa: S310 - loopback
    return digest


def push(registry: str, repo: str, tag: str, content: str) -> str:
    """A one-layer image whose only file says ``content``; returns the manifest digest the registry serves."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = content.encode()
        info = tarfile.TarInfo("release.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                   "digest": _upload(registry, repo, config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                    "digest": _upload(registry, repo, layer)}],
    }).encode()
    req = urllib.request.Request(f"http://{registry}/v2/{repo}/manifests/{tag}", method="PUT", data=manifest,
                                 headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    with urllib.request.urlopen(req) as resp:  # noqa: S310 - loopback
        return resp.headers["Docker-Content-Digest"]


@pytest.fixture
def tags(registry):
    """34.0.3 (pinned), an older patch, another minor and the next major: none of those is an update."""
    repo = f"nextcloud-{time.monotonic_ns()}"
    digests = {tag: push(registry, repo, tag, tag) for tag in
               ("34.0.3-apache", "34.0.2-apache", "34.0.3-fpm", "33.0.9-apache", "35.0.0-apache", "latest")}
    return repo, digests


def deployed(aws, tmp_path: Path, registry: str, repo: str, digest: str, **overrides):
    """An environment baked in the emulator from the registry's 34.0.3 and a group launching that AMI."""
    image = f"{registry}/{repo}:34.0.3-apache@{digest}"
    settings = settings_for(aws, nextcloud__image=image, nextcloud__version="34.0.3", **overrides)
    verdict = build_aws_image(ROOT, settings, build_root=tmp_path, log=lambda _m: None)
    assert verdict.ok, verdict.line()
    ami = build_record.read(build_record.manifest_path(ROOT, settings.name, tmp_path))["artifact_id"]
    make_group(aws, settings, ami)
    return settings


def test_newest_patch_stays_on_the_pinned_major_minor_and_the_apache_variant():
    tags = ["34.0.3-apache", "34.0.10-apache", "34.0.9-apache", "34.1.0-apache", "34.0.11-fpm", "35.0.0-apache"]
    assert newest_patch(tags, "34.0.3") == "34.0.10"
    assert newest_patch(["33.0.1-apache"], "34.0.3") is None


def test_references_are_split_as_docker_does():
    assert parse_reference("nextcloud:34.0.3-apache").name == "registry-1.docker.io/library/nextcloud"
    ref = parse_reference("127.0.0.1:5000/team/nc:34.0.3-apache@sha256:" + "a" * 64)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("127.0.0.1:5000", "team/nc", "34.0.3-apache",
                                                                    "sha256:" + "a" * 64)


def test_the_registry_client_reads_tags_and_the_digest_the_registry_serves(registry, tags):
    repo, digests = tags
    client = RegistryClient(registry)
    assert set(client.tags(repo)) == set(digests)
    assert client.digest(repo, "34.0.3-apache") == digests["34.0.3-apache"]


def test_up_to_date_when_the_group_runs_what_the_tree_bakes(aws, tmp_path, registry, tags):
    hide_newer_debian(aws)
    repo, digests = tags
    settings = deployed(aws, tmp_path, registry, repo, digests["34.0.3-apache"])
    before = emulator_state(aws)
    report = check_updates(ROOT, settings, Aws.for_settings(settings))
    assert report.exit_code() == EXIT_UP_TO_DATE, report.as_json()
    assert {c.name: c.update for c in report.checks} == {
        "source-ami": False, "nextcloud-patch": False, "nextcloud-tag": False, "fingerprint": False}
    assert emulator_state(aws) == before, "check-updates changed something"


def test_a_newer_debian_image_makes_a_bake_due(aws, tmp_path, registry, tags):
    hide_newer_debian(aws)
    repo, digests = tags
    settings = deployed(aws, tmp_path, registry, repo, digests["34.0.3-apache"])
    publish_newer_debian(aws)
    report = check_updates(ROOT, settings, Aws.for_settings(settings))
    assert report.exit_code() == EXIT_BAKE_DUE
    source = next(c for c in report.checks if c.name == "source-ami")
    assert (source.current, source.available, source.update) == (DEBIAN_CURRENT, DEBIAN_NEWER, True)
    assert next(c for c in report.checks if c.name == "fingerprint").update
    assert report.as_json()["bake"] is True


def test_a_changed_tree_makes_a_bake_due(aws, tmp_path, registry, tags):
    hide_newer_debian(aws)
    repo, digests = tags
    settings = deployed(aws, tmp_path, registry, repo, digests["34.0.3-apache"])
    changed = settings.model_copy(update={"instance_type": "t3.large"})  # baked into packer-vars: a new image
    report = check_updates(ROOT, changed, Aws.for_settings(changed))
    assert report.exit_code() == EXIT_BAKE_DUE
    assert [c.name for c in report.checks if c.update] == ["fingerprint"]


def test_a_newer_patch_or_a_rebuilt_tag_is_an_operator_change_named_with_its_pin(aws, tmp_path, registry, tags):
    hide_newer_debian(aws)
    repo, digests = tags
    settings = deployed(aws, tmp_path, registry, repo, digests["34.0.3-apache"])
    newer = push(registry, repo, "34.0.4-apache", "34.0.4")
    rebuilt = push(registry, repo, "34.0.3-apache", "34.0.3 with Debian fixes")
    report = check_updates(ROOT, settings, Aws.for_settings(settings))
    assert report.exit_code() == EXIT_OPERATOR_CHANGE, report.as_json()
    by_name = {c.name: c for c in report.checks}
    assert by_name["nextcloud-patch"].available == "34.0.4"
    assert f"{registry}/{repo}:34.0.4-apache@{newer}" in by_name["nextcloud-patch"].detail
    assert "inv upgrade" in by_name["nextcloud-patch"].detail
    assert by_name["nextcloud-tag"].available == rebuilt and by_name["nextcloud-tag"].update
    assert report.as_json()["operator_changes"] == ["nextcloud-patch", "nextcloud-tag"]


def test_the_task_prints_json_for_a_workflow_and_exits_with_its_code(aws, tmp_path, registry, tags):
    hide_newer_debian(aws)
    repo, digests = tags
    settings = deployed(aws, tmp_path, registry, repo, digests["34.0.3-apache"])
    publish_newer_debian(aws)
    sets = [f"--set={k}={json.dumps(v)}" for k, v in {
        "nextcloud.image": settings.nextcloud.image, "nextcloud.version": "34.0.3",
        "bake.subnet_id": settings.bake.subnet_id, "account_id": settings.account_id}.items()]
    proc = subprocess.run([sys.executable, "-m", "invoke", "check-updates", "--env", "example", "--json", *sets],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_BAKE_DUE, proc.stdout + proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["bake"] is True and answer["exit_code"] == EXIT_BAKE_DUE
    assert "verdict: bake due" in proc.stderr and "Traceback" not in proc.stderr


def test_the_local_twin_is_refused_with_the_reason():
    proc = subprocess.run([sys.executable, "-m", "invoke", "check-updates"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "verdict: refused - check-updates is for AWS environments" in proc.stdout


def _rebuild(step: str, out: Path, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """One step of .ci/rebuild as the workflow runs it: settings the workflow's environment would hold come in
    as NCIMAGE_* variables, the emulator through AWS_ENDPOINT_URL (set by the aws fixture)."""
    github_output = out / "github-output"
    env = {**os.environ, "ENVIRONMENT": "example", "REBUILD_DIR": str(out), "GITHUB_OUTPUT": str(github_output),
           "GITHUB_STEP_SUMMARY": str(out / "summary.md"), **extra}
    return subprocess.run(["bash", str(ROOT / ".ci" / "rebuild"), step], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def test_the_rebuild_workflow_bakes_only_when_check_updates_says_so_and_summarises_why(aws, tmp_path, registry,
                                                                                       tags):
    hide_newer_debian(aws)
    repo, digests = tags
    settings = deployed(aws, tmp_path, registry, repo, digests["34.0.3-apache"])
    variables = {"NCIMAGE_NEXTCLOUD__IMAGE": settings.nextcloud.image, "NCIMAGE_NEXTCLOUD__VERSION": "34.0.3",
                 "NCIMAGE_BAKE__SUBNET_ID": settings.bake.subnet_id,
                 "NCIMAGE_ACCOUNT_ID": json.dumps(settings.account_id)}

    quiet = tmp_path / "quiet"
    quiet.mkdir()
    proc = _rebuild("check", quiet, variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (quiet / "github-output").read_text() == "bake=false\n"
    forced = tmp_path / "forced"
    forced.mkdir()
    assert _rebuild("check", forced, {**variables, "FORCE": "true"}).returncode == 0
    assert (forced / "github-output").read_text() == "bake=true\n"
    assert _rebuild("summary", quiet, variables).returncode == 0
    summary = (quiet / "summary.md").read_text()
    assert "**Up to date**" in summary and "| bake | not run |" in summary

    publish_newer_debian(aws)
    due = tmp_path / "due"
    due.mkdir()
    proc = _rebuild("check", due, variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (due / "github-output").read_text() == "bake=true\n"
    assert _rebuild("summary", due, variables).returncode == 0
    summary = (due / "summary.md").read_text()
    assert "Up to date" not in summary
    assert "| check for updates | bake due |" in summary
    assert f"| source-ami | {DEBIAN_CURRENT} | {DEBIAN_NEWER} | yes | yes |" in summary


def test_a_rebuild_check_that_cannot_answer_fails_the_job_and_the_summary_says_so(tmp_path):
    out = tmp_path / "ci"
    out.mkdir()
    proc = _rebuild("check", out, {"ENVIRONMENT": "local"})  # the twin: check-updates refuses it
    assert proc.returncode == 2 and "for AWS environments" in proc.stderr
    assert not (out / "github-output").exists(), "no bake decision may be taken from a failed check"
    assert _rebuild("summary", out, {"ENVIRONMENT": "local"}).returncode == 0
    summary = (out / "summary.md").read_text()
    assert "**Failed**: check for updates" in summary and "error (exit 2)" in summary
