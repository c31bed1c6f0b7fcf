"""The stand-in base image (a test fixture) carries what the official image carries that changes how a container
starts, a code tree of a real release's size, and the version the environment declares; and it reaches a real
registry on loopback with the digest it was built with (the digest a bake pins).

The full image (mmdebstrap, about a minute) is built by the bake; here its two builders run for real on their own:
the code-tree layer's entries and the OCI layout + registry path with a small layer.
"""

from __future__ import annotations

import json
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest

from infra.localtwin import standin
from infra.localtwin.instance import free_port
from infra.localtwin.registry import LoopbackRegistry
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def code_tree() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    version = load_settings(ROOT, "local", environ={}).settings.nextcloud.version
    return list(standin._code_tree_entries(version))


def test_the_code_tree_has_a_releases_size(code_tree):
    files = [(ti, data) for ti, data in code_tree if ti.isfile()]
    assert len(files) == standin.RELEASE_FILES
    assert sum(ti.size for ti, _ in files) == standin.RELEASE_BYTES
    assert all(ti.size == len(data) for ti, data in files)


def test_the_code_tree_is_owned_and_moded_like_the_release_tarball(code_tree):
    files = {ti.name: ti for ti, _ in code_tree if ti.isfile()}
    assert {(ti.uid, ti.gid) for ti in files.values()} == {(65534, 65534)}
    assert files.pop("usr/src/nextcloud/occ").mode == 0o755
    assert {ti.mode for ti in files.values()} == {0o644}


def test_the_stand_in_carries_the_declared_version(code_tree):
    settings = load_settings(ROOT, "local", environ={}).settings
    version_php = next(data for ti, data in code_tree if ti.name == "usr/src/nextcloud/version.php")
    assert f"$OC_VersionString = '{settings.nextcloud.version}';".encode() in version_php
    major, minor, patch = settings.nextcloud.version.split(".")
    assert f"$OC_Version = array({major}, {minor}, {patch}, 1);".encode() in version_php
    config = standin.image_config(settings.nextcloud.version, [])
    assert f"NEXTCLOUD_VERSION={settings.nextcloud.version}" in config["config"]["Env"]


def test_the_image_declares_what_changes_how_a_container_starts():
    c = standin.image_config("33.0.8", [])["config"]
    assert c["Volumes"] == {"/var/www/html": {}}
    assert (c["Entrypoint"], c["Cmd"], c["WorkingDir"], c["StopSignal"]) == (
        ["/entrypoint.sh"], ["apache2-foreground"], "/var/www/html", "SIGWINCH")
    assert (standin.FIXTURE_DIR / "rootfs" / "entrypoint.sh").stat().st_mode & 0o111


def test_the_filler_is_the_same_on_every_run():
    first = [(n, len(d), hash(d[:64])) for n, d in standin.filler_files(500, 2_000_000)]
    assert first == [(n, len(d), hash(d[:64])) for n, d in standin.filler_files(500, 2_000_000)]


def test_a_built_image_reaches_the_registry_with_its_digest(tmp_path):
    layout = tmp_path / "oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    ti = tarfile.TarInfo("usr/src/nextcloud/version.php")
    data = standin.version_php("33.0.8").encode()
    ti.size = len(data)
    layer = standin.write_layer(iter([(ti, data)]), blobs)
    digest = standin.write_oci_layout(layout, "33.0.8-apache", standin.image_config("33.0.8", [layer]), [layer])
    image = standin.StandinImage(layout, "nextcloud-standin", "33.0.8-apache", digest, "33.0.8")
    with LoopbackRegistry(storage=tmp_path / "registry", port=free_port()) as registry:
        assert registry.push(image) == digest
        assert registry.push(image) == digest, "pushing unchanged content again keeps the digest"
        inspect = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.address}/nextcloud-standin@{digest}"],
            capture_output=True, text=True, check=True)
        assert json.loads(inspect.stdout)["Digest"] == digest
        url = f"http://{registry.address}/v2/nextcloud-standin/tags/list"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert json.loads(r.read())["tags"] == ["33.0.8-apache"]
    assert (tmp_path / "registry" / "config.yml").read_text().count(f"127.0.0.1:{registry.port}") == 1
