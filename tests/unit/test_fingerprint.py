"""The fingerprint covers exactly what reaches the artifact (render/outputs.py says what): the files Packer uploads and
runs, the template, the rendered inputs with the exact base image; not documentation, tests or fixtures, and nothing
of the machine it is computed on."""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

from render.outputs import (
    FINGERPRINT,
    PACKER_VARS,
    ResolvedInputs,
    fingerprinted_files,
    image_upload_files,
    render_all,
    stage_image_upload,
)
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
# What a bake resolves on the host (base disk digest / source AMI id, the digest-pinned image).
LOCAL = ResolvedInputs("sha256:" + "1" * 64, "local-debian-12-base:111111111111",
                       "10.0.2.2:55000/nextcloud-standin:29.0.7-apache@sha256:" + "2" * 64)
AWS = ResolvedInputs("ami-0123456789abcdef0", "debian-12-amd64-20260101-1234")
TREES = ("image", "packer", "environments", "infra/localtwin/standin", "tests/fixtures")


def clone(dest: Path) -> Path:
    """The parts of the repository that could influence a fingerprint, copied to ``dest``."""
    for tree in TREES:
        shutil.copytree(ROOT / tree, dest / tree, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def fingerprints(root: Path) -> dict[str, str]:
    out = {}
    for env, resolved in (("local", LOCAL), ("example", AWS)):
        s = load_settings(root, env, environ={}).settings
        out[env] = render_all(root, s, resolved)[FINGERPRINT]
    return out


def test_documentation_and_fixtures_leave_every_fingerprint_unchanged(tmp_path):
    root = clone(tmp_path / "repo")
    before = fingerprints(root)
    edits = [
        *sorted(root.glob("image/**/README*.md")),
        root / "infra/localtwin/standin/README.md",
        root / "infra/localtwin/standin/nextcloud/README.md",
        root / "tests/fixtures/nextcloud/router.php",
    ]
    assert any("image/" in str(p) for p in edits), "no README under image/ to edit: the test would prove nothing"
    for path in edits:
        path.write_text(path.read_text() + "\nedited by a test\n")
    # The local twin's fixture code reaches an image only through the stand-in's digest (LOCAL), never as files.
    occ = root / "infra/localtwin/standin/nextcloud/occ"
    occ.write_text(occ.read_text() + "\n// edited\n")
    assert fingerprints(root) == before


def test_a_file_the_image_carries_changes_every_fingerprint(tmp_path):
    root = clone(tmp_path / "repo")
    before = fingerprints(root)
    unit = root / "image/rootfs/etc/systemd/system/nextcloud.service"
    unit.write_text(unit.read_text() + "\n# edited\n")
    after = fingerprints(root)
    assert all(after[env] != before[env] for env in before), (before, after)


@pytest.mark.parametrize("env", ["local", "example"])
def test_a_different_base_image_changes_the_fingerprint(env):
    s = load_settings(ROOT, env, environ={}).settings
    resolved = LOCAL if env == "local" else AWS
    other = ResolvedInputs("sha256:" + "3" * 64 if env == "local" else "ami-0fedcba9876543210",
                           resolved.base_image_name, resolved.nextcloud_image)
    first = render_all(ROOT, s, resolved)
    assert render_all(ROOT, s, resolved)[FINGERPRINT] == first[FINGERPRINT]
    assert render_all(ROOT, s, other)[FINGERPRINT] != first[FINGERPRINT]
    # The same selector resolving to a newer image is a new image: the selector alone is not enough.
    assert resolved.base_image_id in first[PACKER_VARS]


def test_same_inputs_give_the_same_fingerprint_on_two_machines(tmp_path):
    a, b = clone(tmp_path / "machine-a" / "repo"), clone(tmp_path / "elsewhere" / "clone")
    for path in b.rglob("*"):  # another checkout: other mtimes
        os.utime(path, (1_000_000_000, 1_000_000_000), follow_symlinks=False)
    assert fingerprints(a) == fingerprints(b)
    rendered = render_all(a, load_settings(a, "local", environ={}).settings, LOCAL)
    hashed = rendered[PACKER_VARS] + rendered["nextcloud.env"]
    assert str(tmp_path) not in hashed, "an absolute path reached the hashed inputs"
    host = socket.gethostname()
    assert len(host) < 4 or host not in hashed, "the host name reached the hashed inputs"
    assert not re.search(r"20\d\d-\d\d-\d\dT\d\d:\d\d", hashed), "a time reached the hashed inputs"


def test_packer_uploads_exactly_the_fingerprinted_files(tmp_path):
    staged = stage_image_upload(ROOT, tmp_path / "upload")
    uploaded = sorted(p.relative_to(tmp_path / "upload").as_posix() for p in staged)
    assert uploaded == [p.as_posix() for p in image_upload_files(ROOT)]
    hashed = {p.as_posix() for p in fingerprinted_files(ROOT) if p.parts[0] == "image"}
    assert {f"image/{u}" for u in uploaded} == hashed
    assert not [u for u in uploaded if Path(u).name.startswith("README")], "documentation would reach the image"
    for rel in uploaded:
        assert os.access(tmp_path / "upload" / rel, os.X_OK) == os.access(ROOT / "image" / rel, os.X_OK), rel
    template = (ROOT / "packer" / "nextcloud.pkr.hcl").read_text()
    sources = re.findall(r'source\s*=\s*"([^"]+)"', template)
    assert "${var.image_upload_dir}/" in sources, "Packer does not upload the staged set"
    assert not [s for s in sources if "../image" in s], f"Packer uploads from image/ directly: {sources}"
