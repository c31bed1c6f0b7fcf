"""The scheduled rebuild's job summary: what an operator reads on the workflow run's page."""

from __future__ import annotations

import json
from pathlib import Path

from infra.ci_summary import last_verdict, render_summary
from infra.verdict import Verdict

MANIFEST = {
    "artifact_id": "ami-0123456789abcdef0", "region": "eu-central-1",
    "amis": {"eu-central-1": "ami-0123456789abcdef0", "eu-west-1": "ami-0fedcba9876543210"},
    "reused": False, "nextcloud_version": "34.0.3", "nextcloud_image": "nextcloud:34.0.3-apache@sha256:" + "b" * 64,
    "base_image": "ami-0aaaaaaaaaaaaaaaa", "base_image_name": "debian-12-amd64-20261115-1934",
    "docker_version": "5:27.3.1-1~debian.12~bookworm", "fingerprint": "f" * 64, "git_sha": "c" * 40,
    "built_at": "2026-12-01T04:31:07Z",
}


def steps(tmp_path: Path, **results: tuple[int, str]) -> Path:
    for name, (rc, log) in results.items():
        (tmp_path / f"{name}.rc").write_text(f"{rc}\n")
        (tmp_path / f"{name}.log").write_text(log)
    return tmp_path


def test_a_full_rebuild_names_the_ami_versions_fingerprint_test_and_rollout_verdict(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    rolled = Verdict("rolled out", "the group launches lt-0abc:8 (ami-0123456789abcdef0); 4 instances replaced")
    steps(tmp_path,
          check=(10, Verdict("bake due", "source-ami: run build-ami, test-ami and rollout", 10).line() + "\n"),
          bake=(0, "packer: ...\n" + Verdict("built", "ami-0123456789abcdef0 in 812 s").line() + "\n"),
          test=(0, Verdict("passed", "tests/image passed on i-0123 (ami-0123456789abcdef0)").line() + "\n"),
          rollout=(0, "refresh  40% |####      |\rrefresh 100% |##########|\r" + rolled.line() + "\n"))
    summary = render_summary("staging", tmp_path, manifest)
    assert "| bake | ok | built - ami-0123456789abcdef0 in 812 s |" in summary
    assert "| canary test | ok | passed - tests/image passed on i-0123" in summary
    assert f"| rollout | ok | {rolled.word} - {rolled.detail} |" in summary
    assert "eu-central-1: `ami-0123456789abcdef0`, eu-west-1: `ami-0fedcba9876543210`" in summary
    assert "34.0.3 (`nextcloud:34.0.3-apache@sha256:" in summary and f"`{'f' * 64}`" in summary
    assert "debian-12-amd64-20261115-1934" in summary and "Up to date" not in summary and "Failed" not in summary


def test_a_failed_rollout_is_the_headline_and_its_verdict_is_shown(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST))
    back = Verdict("rolled back", "the alarm nextcloud-staging-5xx went into ALARM at 40%", 3)
    steps(tmp_path, check=(10, ""), bake=(0, ""), test=(0, ""), rollout=(3, back.line() + "\n"))
    summary = render_summary("staging", tmp_path, manifest)
    assert "**Failed**: rollout." in summary
    assert "| rollout | failed (exit 3) | rolled back - the alarm nextcloud-staging-5xx went into ALARM at 40% |" \
        in summary


def test_a_step_without_a_verdict_says_so_and_steps_not_run_are_marked(tmp_path):
    steps(tmp_path, check=(10, ""), bake=(1, "Traceback? no: packer crashed\n"))
    summary = render_summary("staging", tmp_path, tmp_path / "absent.json")
    assert "| bake | failed (exit 1) | no verdict printed: see the step's log |" in summary
    assert "| canary test | not run | - |" in summary and "| rollout | not run | - |" in summary
    assert "### Image" not in summary  # no manifest: nothing to claim about an AMI


def test_the_last_verdict_wins_and_pipes_cannot_break_the_table(tmp_path):
    assert last_verdict("verdict: a - first\nverdict: b - second\n") == "b - second"
    steps(tmp_path, check=(0, "verdict: up to date - a | b\n"))
    summary = render_summary("staging", tmp_path, tmp_path / "absent.json")
    assert "up to date - a \\| b" in summary and "**Up to date**" in summary
