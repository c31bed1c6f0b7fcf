"""The invoke front door: every task is listed with help, unfinished ones refuse honestly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["render", "validate", "build-ami", "test-ami", "sweep", "rollout", "rollback", "upgrade", "prune-amis",
         "status", "deploy-stack", "bootstrap-db", "bench", "lane", "check-updates"]


def inv(*args, env=None):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)


def test_list_shows_the_whole_front_door_with_help():
    out = inv("--list").stdout
    for name in TASKS:
        line = next((ln for ln in out.splitlines() if ln.strip().startswith(name + " ")), None)
        assert line and len(line.split(None, 1)[1]) > 10, f"{name} has no one-line help in:\n{out}"


def inv_here(capsys, *args) -> tuple[int, str, str]:
    """`inv ARGS` in this process: invoke's own Program parses the line and runs the task, as `inv` does, without
    a second interpreter's start (exit code, stdout, stderr)."""
    from invoke import Program

    import tasks

    try:
        Program(namespace=tasks.ns, version="test").run(["inv", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", TASKS + ["drill"])
def test_every_flag_has_help(capsys, name):
    code, out, _ = inv_here(capsys, name, "--help")
    options = out.split("Options:", 1)[1] if "Options:" in out else ""
    flags = [ln for ln in options.splitlines() if ln.strip().startswith("-")]
    assert code == 0 and flags, out
    for ln in flags:
        assert len(ln.split("  ")) > 1 and ln.split("  ")[-1].strip(), f"{name}: flag without help: {ln!r}"


def test_help_through_the_real_command_line_too():
    out = inv("sweep", "--help").stdout
    assert "Exit codes:" in out and "--older-than=STRING" in out and "skip the confirmation question" in out


@pytest.mark.parametrize("name", ["rollout", "rollback", "upgrade", "prune-amis", "status"])
def test_the_rollout_tasks_refuse_the_local_twin_naming_what_they_need(name):
    proc = inv(name, "--env", "local")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs an AWS environment" in proc.stdout and "verdict: refused" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_deploy_stack_refuses_what_it_cannot_deploy_with_the_fix_and_no_traceback():
    local = inv("deploy-stack")
    assert local.returncode == 2
    assert "deploys AWS environments" in local.stdout and "Traceback" not in local.stdout + local.stderr
    example = inv("deploy-stack", "--env", "example")
    assert example.returncode == 2
    assert "stack.certificate_arn is required" in example.stdout and "nothing was changed" in example.stdout
    bootstrap = inv("bootstrap-db", "--env", "example")
    assert bootstrap.returncode == 2 and "run `inv deploy-stack --env example` first" in bootstrap.stdout


@pytest.mark.parametrize("args", [["sweep", "--env", "local"], ["test-ami", "--env", "local", "--ami", "ami-1"],
                                  ["build-ami", "--env", "local", "--dry-run"]])
def test_aws_only_flags_and_tasks_are_refused_for_the_local_twin(args):
    proc = inv(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("verdict: refused - ") and "AWS" in last, proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


# A bad number or duration: exit 2, the verdict line names the flag and the value, no traceback, nothing run.
BAD_VALUES = [
    (["bootstrap-db", "--env", "example", "--timeout", "abc"], "--timeout 'abc'"),
    (["test-ami", "--instances", "two"], "--instances 'two'"),
    (["test-ami", "--instances", "0"], "--instances '0'"),
    (["prune-amis", "--env", "example", "--keep", "abc"], "--keep 'abc'"),
    (["sweep", "--env", "example", "--older-than", "soon"], "--older-than 'soon'"),
    (["bench", "--runs", "1.5"], "--runs '1.5'"),
    (["drill", "--rate", "nan"], "--rate 'nan'"),
    (["drill", "--duration=-5"], "--duration '-5'"),
]


@pytest.mark.parametrize("args, named", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_a_bad_number_or_duration_exits_2_naming_the_flag(capsys, args, named):
    code, out, err = inv_here(capsys, *args)
    assert code == 2, out + err
    assert out.strip().splitlines()[-1].startswith(f"verdict: refused - {named}: must be "), out
    assert "Traceback" not in out + err


def test_a_bad_timeout_through_the_real_command_line_exits_2_without_a_traceback():
    proc = inv("bootstrap-db", "--env", "example", "--timeout", "abc")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.startswith("verdict: refused - --timeout 'abc': must be a duration"), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def _collection():
    import tasks

    return tasks.ns


def test_no_task_has_an_automatic_short_flag():
    for name, task in _collection().tasks.items():
        short = [n for arg in task.get_arguments() for n in arg.names if len(n) == 1]
        assert not short, f"{name} has short flags {short}: one letter must not mean two things across tasks"


def test_every_tasks_help_lists_its_exit_codes_and_yes_means_skip_the_question():
    for name, task in _collection().tasks.items():
        doc = task.__doc__ or ""
        assert "Exit codes:" in doc and "  0  " in doc and "  2  refused" in doc and "130  interrupted" in doc, name
        yes = (task.help or {}).get("yes")
        if yes is not None:
            assert yes.startswith("skip the confirmation question"), f"{name}: --yes {yes!r}"
    assert "  4  rolled back" in _collection().tasks["rollout"].__doc__
    assert " 10  a bake is due" in _collection().tasks["check-updates"].__doc__


def test_validates_first_help_line_names_every_linter_it_runs():
    listed = _collection().tasks["validate"].__doc__.splitlines()[0]  # what `inv --list` shows
    for linter in ("packer", "shellcheck", "php -l", "cloud-init", "ruff", "cfn-lint", "checkov"):
        assert linter in listed, listed


# Every linter of `inv validate`, checkov's tens of seconds among them: in the full suite, not the quick one.
@pytest.mark.slow
def test_validate_passes_on_the_shipped_environments_and_names_every_check():
    for env in ("local", "example"):
        proc = inv("validate", "--env", env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for check in ("settings", "cloud-init schema", "shellcheck", "php -l", "ruff", "packer validate"):
            assert check in proc.stdout, f"{check} missing from:\n{proc.stdout}"


# Every linter of `inv validate`, checkov's tens of seconds among them: in the full suite, not the quick one.
@pytest.mark.slow
def test_validate_fails_when_a_linter_fails(tmp_path):
    """A broken user-data template must turn validate red (cloud-init schema), without touching the repo."""
    import shutil

    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(ROOT / "tasks", project / "tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "render", project / "render", ignore=shutil.ignore_patterns("__pycache__"))
    for tree in ("infra", "environments", "image", "packer", "pyproject.toml"):
        (project / tree).symlink_to(ROOT / tree)
    template = project / "render" / "templates" / "user-data.yaml.j2"
    template.write_text(template.read_text().replace("write_files:", "write_filez:"))
    proc = subprocess.run([sys.executable, "-m", "invoke", "validate", "--env", "local"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cloud-init schema" in proc.stdout and "FAIL" in proc.stdout, proc.stdout
