"""The image: render, validate, bake, test, check for updates, and clean up after failed runs and old builds."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from infra.errors import Refusal
from infra.verdict import Verdict
from tasks.cli import (
    AWS_EXIT_CODES,
    DRY_RUN_HELP,
    ENV_HELP,
    ROOT,
    SET_HELP,
    YES_HELP,
    Duration,
    Number,
    ask_on_terminal,
    console,
    format_duration,
    load,
    pipeline_task,
    say,
)


@pipeline_task(help={"env": ENV_HELP, "set": SET_HELP})
def render(c, env=None, set_=None):
    """Render user data, Packer variables, the Nextcloud environment and the fingerprint into build/<env>/."""
    from render.outputs import render_all, write_outputs

    loaded = load(c, env, set_)
    out = ROOT / "build" / loaded.settings.name
    written = write_outputs(out, render_all(ROOT, loaded.settings))
    for path in written:
        console.print(f"  wrote {path.relative_to(ROOT)}")
    console.print(f"fingerprint {(out / 'fingerprint').read_text().strip()}")


@pipeline_task(help={"env": ENV_HELP, "set": SET_HELP})
def validate(c, env=None, set_=None):
    """Check the settings and run every linter: packer, shellcheck, php -l, cloud-init, ruff, cfn-lint, checkov."""
    from infra.validate import run_checks

    loaded = load(c, env, set_)
    checks = run_checks(ROOT, loaded.settings, packer_validate=_packer_validate())
    table = Table(title=f"validate --env {loaded.settings.name}")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for ch in checks:
        result = "[yellow]skip[/]" if ch.skipped else ("[green]pass[/]" if ch.ok else "[red]FAIL[/]")
        detail = ch.detail if not ch.ok else ch.detail.splitlines()[0] if ch.detail else ""
        table.add_row(ch.name, result, detail)
    console.print(table)
    failed = [ch.name for ch in checks if not ch.ok]
    if failed:
        return Verdict("failed", f"validate: {', '.join(failed)}", 1)
    return Verdict("valid", f"{len(checks)} checks on {loaded.settings.name} passed or were skipped (see above)")


def _packer_validate():
    try:
        from infra.packer import validate_template
    except ImportError:
        return None
    return validate_template


@pipeline_task(
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "force": "bake even when an artifact with the same fingerprint exists",
        "dry_run": DRY_RUN_HELP,
    },
    exit_codes=AWS_EXIT_CODES,
    interrupted="stopped by Ctrl-C; what the run had created was removed (listed above)",
)
def build_ami(c, env=None, set_=None, force=False, dry_run=False):
    """Bake the image (AWS: an AMI via amazon-ebs; local: a qcow2; reuses one with the same fingerprint)."""
    loaded = load(c, env, set_)
    if loaded.settings.builder == "aws":
        from infra.aws.bake import build_aws_image

        return build_aws_image(ROOT, loaded.settings, dry_run=dry_run, force=force, log=say)
    if dry_run:
        raise Refusal("--dry-run is for AWS environments; the local bake changes nothing outside build/")
    from infra.localtwin.build import build_local_image

    record = build_local_image(ROOT, loaded.settings, force=force)
    return Verdict("reused" if record.get("reused") else "built",
                   f"{record['artifact_id']}, fingerprint {str(record['fingerprint'])[:12]}")


@pipeline_task(
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "instances": "how many throwaway instances to boot against the same services (default 1)",
        "keep_going": "run the whole testinfra suite even after a failure",
        "one_at_a_time": "boot the instances one after another instead of side by side (slower, less CPU)",
        "ami": "AWS: the AMI to test (default: artifact_id of build/<env>/manifest.json)",
        "timeout": "AWS: how long the canary may take to become ready: seconds or 20m, 1h (default 1200)",
        "accept_new_host_key": "AWS: when the canary's console output shows no SSH host keys within 3 minutes, "
                               "trust the key it presents on first contact (weaker; default: refuse)",
        "dry_run": DRY_RUN_HELP,
    },
    types={"instances": Number(1, 16, whole=True), "timeout": Duration(1, 86400)},
    exit_codes=AWS_EXIT_CODES,
    interrupted="stopped by Ctrl-C; everything the run started was torn down",
)
def test_ami(c, env=None, set_=None, instances=None, keep_going=False, one_at_a_time=False, ami=None, timeout=None,
             accept_new_host_key=False, dry_run=False):
    """Boot throwaway instances of the baked image (AWS: one canary) and run tests/image against them."""
    loaded = load(c, env, set_)
    if loaded.settings.builder == "aws":
        if instances or one_at_a_time:
            raise Refusal("--instances and --one-at-a-time are for the local twin; on AWS one canary is tested")
        from infra.aws.canary import test_aws_image

        return test_aws_image(ROOT, loaded.settings, ami=ami, dry_run=dry_run, keep_going=keep_going,
                              timeout_s=timeout, log=say, accept_new_host_key=accept_new_host_key)
    if ami or dry_run or accept_new_host_key:
        raise Refusal("--ami, --accept-new-host-key and --dry-run are for AWS environments")
    from infra.localtwin.test_ami import test_local_image

    count = instances or int(c.config.pipeline.instances)
    if test_local_image(ROOT, loaded.settings, instances=count, keep_going=keep_going, concurrent=not one_at_a_time):
        return Verdict("passed", f"tests/image passed on {count} instance(s) of the local image")
    return Verdict("failed", "tests/image failed on the local image (see above)", 1)


@pipeline_task(
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "json": "print the answers as JSON on stdout (the verdict goes to stderr)",
    },
    exit_codes={10: "a bake is due (newer source AMI or changed tree)",
                11: "only a settings change is available (e.g. a newer Nextcloud patch to pin)"},
)
def check_updates(c, env=None, set_=None, json=False):
    """Is a bake due (newer source AMI, changed tree) or a newer Nextcloud patch out? Read-only; exit code says."""
    loaded = load(c, env, set_)
    if loaded.settings.builder != "aws":
        raise Refusal(f"check-updates is for AWS environments; {loaded.settings.name} is {loaded.settings.builder} "
                      "(the local twin rebuilds from its own base disk: inv build-ami)")
    from infra.aws.session import Aws
    from infra.aws.updates import check_updates as check

    report = check(ROOT, loaded.settings, Aws.for_settings(loaded.settings))
    if json:
        import json as json_module

        print(json_module.dumps(report.as_json(), indent=2), flush=True)
    else:
        _print_updates(report)
    return report.verdict()


def _print_updates(report) -> None:
    table = Table(title=f"check-updates --env {report.environment}")
    for column in ("check", "running", "available", "update", "what"):
        table.add_column(column, overflow="fold")
    for ch in report.checks:
        mark = ("[yellow]bake[/]" if ch.bake else "[cyan]settings[/]") if ch.update else "[green]none[/]"
        table.add_row(ch.name, ch.current, ch.available, mark, Text(ch.detail))
    console.print(table)


@pipeline_task(
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "older_than": "only what is at least this old, e.g. 6h, 90m, 2d (default 6h; 0s = everything)",
        "yes": YES_HELP + "; without it and without a terminal, sweep only lists",
        "dry_run": DRY_RUN_HELP,
    },
    types={"older_than": Duration(0, 10 * 365 * 86400)},
    exit_codes=AWS_EXIT_CODES,
    interrupted="stopped by Ctrl-C; run sweep again to see what is left",
)
def sweep(c, env=None, set_=None, older_than="6h", yes=False, dry_run=False):
    """List what failed bakes and canaries left in AWS (only this project's tags), then remove it once confirmed."""
    loaded = load(c, env, set_)
    if loaded.settings.builder != "aws":
        raise Refusal(f"sweep is for AWS environments; {loaded.settings.name} is {loaded.settings.builder}")
    from infra.aws.sweep import sweep_environment

    return sweep_environment(loaded.settings, older_than=format_duration(older_than), remove=yes, dry_run=dry_run,
                             log=say, confirm=None if yes or dry_run else ask_on_terminal())


@pipeline_task(
    help={"env": ENV_HELP, "set": SET_HELP, "keep": "builds to keep besides those in use (default: ami.retention)",
          "yes": YES_HELP + "; without it and without a terminal, prune-amis only shows the plan",
          "dry_run": DRY_RUN_HELP},
    types={"keep": Number(1, 1000, whole=True)},
    exit_codes=AWS_EXIT_CODES,
    interrupted="stopped by Ctrl-C; run prune-amis again: what was not yet deregistered is planned again",
)
def prune_amis(c, env=None, set_=None, keep=None, yes=False, dry_run=False):
    """Deregister old AMIs (and delete their snapshots) in every region, never one a launch template may launch."""
    from infra.rollout.prune import prune
    from tasks.fleet import rollout_call

    return rollout_call(c, env, set_, lambda s, report: prune(
        s, keep=keep, yes=yes, dry_run=dry_run, report=report, confirm=None if yes or dry_run else ask_on_terminal()))


@pipeline_task(
    help={
        "release": "a Nextcloud release archive (.tar.bz2, .tar.gz, .zip) or unpacked tree (default: the "
                   "environment's nextcloud.release)",
        "env": ENV_HELP,
        "set": SET_HELP,
        "all": "list every signature scope, not only those with findings",
    },
    exit_codes={1: "refused: a file differs, an extra or unsigned file, or a bad signature or certificate"},
)
def verify_release(c, release=None, env=None, set_=None, all_=False):
    """Check a Nextcloud release against its code signatures, pinned to Nextcloud's root (what the twin does first)."""
    from pathlib import Path

    from infra.release.cli import check

    path = release
    if path is None:
        path = load(c, env, set_).settings.nextcloud.release
    if not path:
        raise Refusal("no release to check: give --release PATH (an archive or an unpacked tree) or set "
                      "nextcloud.release (NCIMAGE_NEXTCLOUD__RELEASE)")
    return check(Path(path), show_all=all_, console=console)
