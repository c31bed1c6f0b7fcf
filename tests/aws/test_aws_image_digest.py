"""The Nextcloud digest pinned on the host by a real Docker-compatible engine: Podman's API service (what the
docker SDK talks to) pulling from a real registry (Debian's docker-registry) on loopback. The expected digest is
read independently of the code under test, with skopeo from the registry itself."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from bake_support import ROOT, settings_for

from infra import build_record
from infra.aws.image_digest import resolve_image_digest

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("podman", "skopeo", "docker-registry")),
    reason="needs podman, skopeo and docker-registry (apt-get install podman skopeo docker-registry)",
)
TAG = "34.0.3-apache"  # agrees with environments/example.toml's nextcloud.version


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(path: Path) -> Path:
    """A one-layer OCI image (a stand-in: one file, no Nextcloud) in an OCI layout directory."""
    (path / "blobs" / "sha256").mkdir(parents=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        body = b"stand-in layer of a test image\n"
        info = tarfile.TarInfo("srv/standin.txt")
        info.size, info.mtime = len(body), 0
        tar.addfile(info, io.BytesIO(body))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = f"sha256:{hashlib.sha256(raw.getvalue()).hexdigest()}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(path, config.encode())},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(path, layer)}]}
    ref = _blob(path, json.dumps(manifest).encode())
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **ref,
         "annotations": {"org.opencontainers.image.ref.name": TAG}}]}))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return path


def _wait_for(what: str, check, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A registry on 127.0.0.1 holding nextcloud:<TAG>, and Podman's API service (own storage) that trusts it."""
    from infra.localtwin.instance import free_port

    tmp = tmp_path_factory.mktemp("engine")
    port = free_port()
    registry = f"127.0.0.1:{port}"
    (tmp / "registry.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp / 'registry'}\nhttp:\n  addr: {registry}\n")
    runroot = None
    procs = [subprocess.Popen(["docker-registry", "serve", str(tmp / "registry.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        def registry_up() -> bool:
            import urllib.request
            try:
                with urllib.request.urlopen(f"http://{registry}/v2/", timeout=2):  # noqa: S310 - loopback
                    return True
            except OSError:
                return False

        _wait_for("docker-registry", registry_up, procs[0])
        reference = f"{registry}/nextcloud:{TAG}"
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{oci_layout(tmp / 'oci')}:{TAG}",
                        f"docker://{reference}"], check=True, capture_output=True)
        expected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}",
                                   f"docker://{reference}"], check=True, capture_output=True, text=True).stdout.strip()
        (tmp / "registries.conf").write_text(f'[[registry]]\nlocation = "{registry}"\ninsecure = true\n')
        (tmp / "containers.conf").write_text('[engine]\nruntime = "runc"\n')
        socket = tmp / "podman.sock"
        # Podman refuses a runroot longer than 50 characters, which a pytest-xdist worker's tmp path is.
        runroot = Path(tempfile.mkdtemp(prefix="podman-run-"))
        env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(tmp / "registries.conf"),
               "CONTAINERS_CONF": str(tmp / "containers.conf")}
        procs.append(subprocess.Popen(
            ["podman", "--root", str(tmp / "storage"), "--runroot", str(runroot), "--storage-driver", "vfs",
             "system", "service", "--time=0", f"unix://{socket}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for("podman system service", socket.exists, procs[1])
        yield {"docker_host": f"unix://{socket}", "reference": reference, "digest": expected}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if runroot is not None:
            shutil.rmtree(runroot, ignore_errors=True)


def test_a_tag_is_pinned_to_the_digest_the_registry_serves(engine, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", engine["docker_host"])
    assert resolve_image_digest(engine["reference"]) == f"{engine['reference']}@{engine['digest']}"


def test_build_ami_bakes_and_fingerprints_the_pinned_reference(aws, engine, monkeypatch, tmp_path):
    if not shutil.which("packer"):
        pytest.skip("packer not installed")
    from infra.aws.bake import build_aws_image
    from render import tags as T

    monkeypatch.setenv("DOCKER_HOST", engine["docker_host"])
    settings = settings_for(aws, nextcloud__image=engine["reference"])
    verdict = build_aws_image(ROOT, settings, build_root=tmp_path, log=lambda _m: None)
    assert verdict.word == "built", verdict.line()
    pinned = f"{engine['reference']}@{engine['digest']}"
    variables = json.loads((tmp_path / "example" / "packer-vars.json").read_text())
    assert variables["nextcloud_image"] == pinned
    manifest = build_record.read(build_record.manifest_path(ROOT, "example", tmp_path))
    assert manifest["nextcloud_image"] == pinned
    image = aws.client("ec2").describe_images(ImageIds=[manifest["artifact_id"]])["Images"][0]
    assert {t["Key"]: t["Value"] for t in image["Tags"]}[T.NEXTCLOUD_IMAGE] == pinned
