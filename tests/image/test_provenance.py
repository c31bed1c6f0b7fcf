"""Provenance: the image records what it was built from, and carries what the settings that drove the bake asked
for. Expected values come from those settings (``expected``, passed in by test-ami), never from the instance's own
version-info.json, which is checked against them."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.provenance

DERIVED = "nextcloud-cluster:current"


@pytest.mark.parametrize(
    ("recorded_key", "expected_key"),
    [
        ("fingerprint", "fingerprint"),
        ("nextcloud_image", "nextcloud_image"),
        ("nextcloud_version", "nextcloud_version"),
        ("base_image", "base_image"),
    ],
)
def test_version_info_records_what_was_asked_for(version_info, expected, recorded_key, expected_key):
    assert version_info.get(recorded_key) == expected[expected_key], (
        f"version-info {recorded_key} is {version_info.get(recorded_key)!r}; the bake was asked for "
        f"{expected[expected_key]!r}"
    )


def test_version_info_records_the_pulled_digest(version_info, expected):
    digest = expected["nextcloud_image"].rsplit("@", 1)[-1]
    assert version_info.get("nextcloud_image_digest") == digest, (
        f"version-info records base image digest {version_info.get('nextcloud_image_digest')!r}, "
        f"the settings pin {digest}"
    )


@pytest.mark.live
def test_base_image_in_the_store_is_the_pinned_digest(host, expected):
    ref = expected["nextcloud_image"]
    repository, digest = ref.rsplit("@", 1)[0].rsplit(":", 1)[0], ref.rsplit("@", 1)[1]
    out = host.run(f"docker image inspect --format '{{{{json .RepoDigests}}}}' {ref}")
    assert out.rc == 0, f"{ref} is not in the image's Docker store: {out.stderr.strip()}"
    assert f"{repository}@{digest}" in json.loads(out.stdout), f"the stored base image carries {out.stdout.strip()}"


@pytest.mark.live
def test_derived_image_is_built_on_the_pinned_base(host, expected):
    fmt = "'{{json .RootFS.Layers}}'"
    base = json.loads(host.check_output(f"docker image inspect --format {fmt} {expected['nextcloud_image']}"))
    derived = json.loads(host.check_output(f"docker image inspect --format {fmt} {DERIVED}"))
    assert derived[: len(base)] == base, f"{DERIVED} is not built on {expected['nextcloud_image']}"


@pytest.mark.live
def test_code_in_the_image_is_the_declared_version(host, expected):
    # The code the image carries, not what anything says about it: version.php in the served webroot.
    script = 'require getenv("NEXTCLOUD_WEBROOT") . "/version.php"; echo $OC_VersionString;'
    out = host.run(f"docker run --rm --network none --entrypoint php {DERIVED} -r '{script}'")
    assert out.rc == 0, f"cannot read version.php in {DERIVED}: {out.stderr.strip()}"
    assert out.stdout.strip() == expected["nextcloud_version"], (
        f"the image's code is {out.stdout.strip()!r}, the settings declare nextcloud.version "
        f"{expected['nextcloud_version']!r}"
    )
