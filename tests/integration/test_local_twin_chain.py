"""The whole local chain, for real: bake with Packer's qemu source, reuse on no-op, boot, testinfra, teardown.

This is the same path an operator runs with the README's first command; it takes minutes under TCG.
Set SKIP_LOCAL_TWIN=1 to skip it when iterating on unit tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import build_record
from infra.localtwin.build import file_sha256 as sha256

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = build_record.manifest_path(ROOT, "local")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SKIP_LOCAL_TWIN") == "1", reason="SKIP_LOCAL_TWIN=1"),
]


def inv(*args: str, timeout: int) -> subprocess.CompletedProcess[str]:
    """Run a task with its progress streamed to the test log (pytest -s shows it live)."""
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, text=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sys.stdout.write(proc.stdout)
    return proc


@pytest.fixture(scope="module")
def baked(local_artifact) -> dict:
    return local_artifact


def test_bake_records_the_artifact(baked):
    artifact = Path(baked["artifact_id"])
    assert artifact.is_file()
    assert baked["sha256"] == sha256(artifact)
    # The fingerprint's one home is the bake's record: the artifact lives under artifacts/<fingerprint>/. The
    # rendered build/local/fingerprint is whatever the latest render wrote (an offline render writes another).
    assert artifact.parent.name == baked["fingerprint"]
    assert f"(fingerprint {baked['fingerprint'][:12]}" in baked["build_output"] or baked["reused"]
    for key in ("reused", "built_at", "kernel", "initrd"):
        assert key in baked


def test_unchanged_inputs_reuse_the_artifact_without_a_vm(baked):
    from infra.bench.procwatch import watch_process_tree

    before = sha256(Path(baked["artifact_id"]))
    run = watch_process_tree([sys.executable, "-m", "invoke", "build-ami", "--env", "local"], ROOT)
    assert run["exit_code"] == 0, run["output"]
    again = build_record.read(MANIFEST)
    assert again["reused"] is True
    assert again["artifact_id"] == baked["artifact_id"]
    assert not run["qemu_seen"] and not run["packer_seen"], run["process_names"]
    assert sha256(Path(again["artifact_id"])) == before, "the baked artifact is never modified"
    print(f"no-op rebuild took {run['seconds']:.1f}s")


def test_two_instances_join_one_cluster_and_pass_the_image_suite(baked):
    proc = inv("test-ami", "--env", "local", "--instances", "2", timeout=3600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert sha256(Path(baked["artifact_id"])) == baked["sha256"], "booting must not modify the artifact"
