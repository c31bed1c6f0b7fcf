"""The front door: `inv --list`. Thin on purpose — parse flags, call one function in render/ or infra/, print."""

from __future__ import annotations

import sys
from pathlib import Path

from invoke import Collection, Context, Exit, task
from rich.console import Console
from rich.table import Table
from rich.text import Text

ROOT = Path(__file__).resolve().parent
# Defaults live here and only here; `invoke.yaml` or INVOKE_PIPELINE_* variables can override them.
DEFAULTS = {"pipeline": {"env": "local", "instances": 1, "bench_runs": 3}}

console = Console(stderr=False, highlight=False)
warnings_console = Console(stderr=True, highlight=False, soft_wrap=True)

ENV_HELP = "environment name: environments/<env>.toml (default: local, the QEMU twin that needs no AWS account)"
SET_HELP = "override one setting, e.g. --set database.port=5433 (repeatable; wins over NCIMAGE_* variables)"


def _env(c: Context, env: str | None) -> str:
    return env or c.config.pipeline.env


def _load(c: Context, env: str | None, sets: list[str] | None):
    from render.settings import SettingsError, load_settings

    try:
        loaded = load_settings(ROOT, _env(c, env), sets=sets or [])
    except SettingsError as exc:
        raise Exit(f"error: {exc}\nNothing was written.", code=2) from None
    for warning in loaded.warnings:  # e.g. the pinned Nextcloud is past its end of life: said, never fatal
        warnings_console.print(Text.assemble(("warning: ", "bold yellow"), warning))
    return loaded


def _not_yet(what: str, why: str) -> None:
    raise Exit(f"{what} is not available yet: {why}", code=3)


def _say(message: str) -> None:
    print(message, flush=True)  # plain: AWS messages hold brackets that rich would read as markup


def _aws(call, say=None) -> None:
    """Run one AWS operation and end with its verdict line and exit code (refusals: 2, failures: 1, Ctrl-C: 130).

    ``say`` prints the verdict line (default: stdout)."""
    from infra.aws.session import AwsError
    from infra.verdict import Verdict

    try:
        verdict = call()
    except AwsError as exc:
        verdict = Verdict("refused" if exc.exit_code == 2 else "failed", str(exc), exc.exit_code)
    except KeyboardInterrupt:
        verdict = Verdict("interrupted", "stopped by Ctrl-C; what the run created was removed (listed above)", 130)
    (say or _say)(verdict.line())
    if not verdict.ok:
        raise Exit(code=verdict.exit_code)


@task(
    iterable=["set_"],
    help={"env": ENV_HELP, "set": SET_HELP},
)
def render(c, env=None, set_=None):
    """Render user data, Packer variables, the Nextcloud environment and the fingerprint into build/<env>/."""
    from render.outputs import render_all, write_outputs

    loaded = _load(c, env, set_)
    out = ROOT / "build" / loaded.settings.name
    written = write_outputs(out, render_all(ROOT, loaded.settings))
    for path in written:
        console.print(f"  wrote {path.relative_to(ROOT)}")
    console.print(f"fingerprint {(out / 'fingerprint').read_text().strip()}")


@task(
    iterable=["set_"],
    help={"env": ENV_HELP, "set": SET_HELP},
)
def validate(c, env=None, set_=None):
    """Check the settings and run every linter that applies (packer, shellcheck, php -l, cloud-init, ruff)."""
    from infra.validate import run_checks

    loaded = _load(c, env, set_)
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
        raise Exit(f"validate failed: {', '.join(failed)}", code=1)


def _packer_validate():
    try:
        from infra.packer import validate_template
    except ImportError:
        return None
    return validate_template


DRY_RUN_HELP = "AWS: print what would be created, changed or deleted; make no call that changes anything"


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "force": "bake even when an artifact with the same fingerprint exists",
        "dry_run": DRY_RUN_HELP,
    },
)
def build_ami(c, env=None, set_=None, force=False, dry_run=False):
    """Bake the image (AWS: an AMI via amazon-ebs; local: a qcow2; reuses one with the same fingerprint)."""
    loaded = _load(c, env, set_)
    if loaded.settings.builder == "aws":
        from infra.aws.bake import build_aws_image

        _aws(lambda: build_aws_image(ROOT, loaded.settings, dry_run=dry_run, force=force, log=_say))
        return
    if dry_run:
        raise Exit("--dry-run is for AWS environments; the local bake changes nothing outside build/", code=2)
    try:
        from infra.localtwin.build import build_local_image
    except ImportError:
        _not_yet("build-ami", "the local bake driver (infra/localtwin/build.py) has not landed")
    try:
        build_local_image(ROOT, loaded.settings, force=force)
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "instances": "how many throwaway instances to boot against the same services (default 1)",
        "keep_going": "run the whole testinfra suite even after a failure",
        "one_at_a_time": "boot the instances one after another instead of side by side (slower, less CPU)",
        "ami": "AWS: the AMI to test (default: artifact_id of build/<env>/manifest.json)",
        "timeout": "AWS: seconds the canary may take to become ready (default 1200)",
        "dry_run": DRY_RUN_HELP,
    },
)
def test_ami(c, env=None, set_=None, instances=None, keep_going=False, one_at_a_time=False, ami=None, timeout=None,
             dry_run=False):
    """Boot throwaway instances of the baked image (AWS: one canary) and run tests/image against them."""
    loaded = _load(c, env, set_)
    if loaded.settings.builder == "aws":
        if instances or one_at_a_time:
            raise Exit("--instances and --one-at-a-time are for the local twin; on AWS one canary is tested", code=2)
        from infra.aws.canary import test_aws_image

        _aws(lambda: test_aws_image(ROOT, loaded.settings, ami=ami, dry_run=dry_run, keep_going=keep_going,
                                    timeout_s=float(timeout) if timeout else None, log=_say))
        return
    if ami or dry_run:
        raise Exit("--ami and --dry-run are for AWS environments", code=2)
    try:
        from infra.localtwin.test_ami import test_local_image
    except ImportError:
        _not_yet("test-ami", "the local boot driver (infra/localtwin/test_ami.py) has not landed")
    count = int(instances or c.config.pipeline.instances)
    if count < 1:
        raise Exit("--instances must be at least 1", code=2)
    try:
        ok = test_local_image(
            ROOT, loaded.settings, instances=count, keep_going=keep_going, concurrent=not one_at_a_time
        )
    except KeyboardInterrupt:
        raise Exit("interrupted; everything was torn down", code=130) from None
    if not ok:
        raise Exit("test-ami failed", code=1)


@task(
    iterable=["only"],
    help={
        "env": ENV_HELP,
        "runs": "boots per readiness measurement (default 3)",
        "only": "run just this measurement (repeatable): bare, baked, seed, noop, bake, footprint",
        "full_bake": "also time a fresh forced bake instead of reading the last bake's record",
        "seed_runs": "boots for the seed-style measurement (default: --runs; each takes about 10 minutes)",
        "timeout": "seconds one boot may take before it counts as failed (default 2400)",
    },
)
def bench(c, env=None, runs=None, only=None, full_bake=False, seed_runs=None, timeout=None):
    """Measure readiness after boot (bare, baked, seed-style), no-op rebuild, bake steps and footprint."""
    from infra.bench import BenchError, run_bench

    loaded = _load(c, env, None)
    if loaded.settings.builder != "local":
        _not_yet("bench on AWS", "the benchmark measures the local twin")
    try:
        extra = {"timeout_s": float(timeout)} if timeout else {}
        run_bench(ROOT, loaded.settings, runs=int(runs or c.config.pipeline.bench_runs), only=only or None,
                  full_bake=full_bake, seed_runs=int(seed_runs) if seed_runs else None, **extra)
    except BenchError as exc:
        raise Exit(f"bench: {exc}", code=1) from None
    except KeyboardInterrupt:
        raise Exit("interrupted; everything was torn down", code=130) from None


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP + "; an AWS environment's nextcloud.image is the base, the local one's is the stand-in",
        "set": SET_HELP,
        "base": "build on this image instead (repo:tag[@sha256:...]), e.g. the digest-pinned official image",
        "upgrade_from": "the release the upgrade check starts from (default: the base's previous patch tag)",
    },
)
def lane(c, env=None, set_=None, base=None, upgrade_from=None):
    """Real-Nextcloud test lane: two containers of the derived image on PostgreSQL, Redis (TLS) and S3."""
    from infra.lane.lane import LaneUsageError, lane_base, run_lane

    loaded = _load(c, env, set_)
    try:
        code = run_lane(lane_base(loaded.settings, base), upgrade_from)
    except LaneUsageError as exc:
        raise Exit(f"error: {exc}; nothing was run", code=2) from None
    if code:
        raise Exit(code=code)


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "older_than": "only what is at least this old, e.g. 6h, 90m, 2d (default 6h; 0s = everything)",
        "yes": "remove what is listed (default: only list it)",
        "dry_run": DRY_RUN_HELP,
    },
)
def sweep(c, env=None, set_=None, older_than="6h", yes=False, dry_run=False):
    """List (--yes: remove) what failed bakes and canaries left in AWS: only resources with this project's tags."""
    loaded = _load(c, env, set_)
    if loaded.settings.builder != "aws":
        raise Exit(f"sweep is for AWS environments; {loaded.settings.name} is {loaded.settings.builder}", code=2)
    from infra.aws.sweep import sweep_environment

    _aws(lambda: sweep_environment(loaded.settings, older_than=older_than, remove=yes, dry_run=dry_run, log=_say))


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "json": "print the answers as JSON on stdout (the verdict goes to stderr); exit 0 nothing new, 10 a bake "
                "is due, 11 only a settings change is available",
    },
)
def check_updates(c, env=None, set_=None, json=False):
    """Is a bake due (newer source AMI, changed tree) or a newer Nextcloud patch out? Read-only; exit code says."""
    loaded = _load(c, env, set_)
    if loaded.settings.builder != "aws":
        raise Exit(f"check-updates is for AWS environments; {loaded.settings.name} is {loaded.settings.builder} "
                   "(the local twin rebuilds from its own base disk: inv build-ami)", code=2)
    from infra.aws.session import Aws
    from infra.updates import check_updates as check

    def run():
        report = check(ROOT, loaded.settings, Aws.for_settings(loaded.settings))
        if json:
            import json as json_module

            print(json_module.dumps(report.as_json(), indent=2), flush=True)
        else:
            _print_updates(report)
        return report.verdict()

    # With --json, stdout is the document a workflow parses: the verdict line goes to stderr.
    _aws(run, say=(lambda line: print(line, file=sys.stderr, flush=True)) if json else None)


def _print_updates(report) -> None:
    table = Table(title=f"check-updates --env {report.environment}")
    for column in ("check", "running", "available", "update", "what"):
        table.add_column(column, overflow="fold")
    for ch in report.checks:
        mark = ("[yellow]bake[/]" if ch.bake else "[cyan]settings[/]") if ch.update else "[green]none[/]"
        table.add_row(ch.name, ch.current, ch.available, mark, Text(ch.detail))
    console.print(table)



YES_HELP = "do it without asking (needed when stdin is not a terminal)"
AMI_HELP = "the AMI to roll out (default: the one in build/<env>/manifest.json, from `inv build-ami`)"
UNTESTED_HELP = "roll out an AMI that has not passed test-ami (prints a warning)"


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise Exit(f"{question}\nnot confirmed: stdin is not a terminal; pass --yes\nverdict: not confirmed - nothing "
                   "was changed", code=2)
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _rollout_task(c: Context, env: str | None, sets: list[str] | None, run, verdict_to_stderr: bool = False) -> None:
    """The rollout tasks: load the settings, run one infra.rollout function (it returns the verdict), end with the
    verdict line and its exit code (as `_aws`; with --json the line goes to stderr so stdout is one document)."""
    import botocore.exceptions

    from infra.aws.session import AwsError, describe_client_error
    from infra.rollout.report import Reporter

    loaded = _load(c, env, sets)

    def call():
        try:
            return run(loaded.settings, Reporter(console))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise AwsError(f"{describe_client_error(exc)}; `inv status --env {loaded.settings.name}` shows where "
                           "things stand", exit_code=1) from None

    if not verdict_to_stderr:
        _aws(call)
        return
    from infra.verdict import Verdict

    try:
        verdict = call()
    except AwsError as exc:
        verdict = Verdict("refused" if exc.exit_code == 2 else "failed", str(exc), exc.exit_code)
    print(verdict.line(), file=sys.stderr, flush=True)
    if not verdict.ok:
        raise Exit(code=verdict.exit_code)


@task(
    iterable=["set_"],
    help={"env": ENV_HELP, "set": SET_HELP, "ami": AMI_HELP, "dry_run": DRY_RUN_HELP, "yes": YES_HELP,
          "untested": UNTESTED_HELP},
)
def rollout(c, env=None, set_=None, ami=None, dry_run=False, yes=False, untested=False):
    """Roll a new AMI out to the Auto Scaling group: pinned launch template version, instance refresh, auto-rollback."""
    from infra.rollout.rollout import run

    _rollout_task(c, env, set_, lambda s, report: run(
        s, ROOT, ami_id=ami, untested=untested, dry_run=dry_run, yes=yes, confirm=_confirm, report=report))


@task(iterable=["set_"], help={"env": ENV_HELP, "set": SET_HELP, "dry_run": DRY_RUN_HELP, "yes": YES_HELP})
def rollback(c, env=None, set_=None, dry_run=False, yes=False):
    """Roll back the running instance refresh, or roll out again the AMI the group ran before."""
    from infra.rollout.rollback import rollback as run

    _rollout_task(c, env, set_, lambda s, report: run(s, ROOT, dry_run=dry_run, yes=yes, confirm=_confirm,
                                                      report=report))


@task(
    iterable=["set_"],
    help={"env": ENV_HELP, "set": SET_HELP, "ami": "the AMI with the newer Nextcloud (default: the manifest's)",
          "dry_run": DRY_RUN_HELP, "yes": YES_HELP, "untested": UNTESTED_HELP},
)
def upgrade(c, env=None, set_=None, ami=None, dry_run=False, yes=False, untested=False):
    """Upgrade Nextcloud: maintenance on, the upgrade once from the new image, refresh, maintenance off (resumable)."""
    from infra.rollout.upgrade import upgrade as run

    _rollout_task(c, env, set_, lambda s, report: run(
        s, ROOT, ami_id=ami, untested=untested, dry_run=dry_run, yes=yes, confirm=_confirm, report=report))


@task(
    iterable=["set_"],
    help={"env": ENV_HELP, "set": SET_HELP, "keep": "builds to keep besides those in use (default: ami.retention)",
          "yes": "deregister and delete (without it: only the plan)", "dry_run": DRY_RUN_HELP},
)
def prune_amis(c, env=None, set_=None, keep=None, yes=False, dry_run=False):
    """Deregister old AMIs (and delete their snapshots) in every region, never one a launch template may launch."""
    from infra.rollout.prune import prune

    try:
        count = int(keep) if keep is not None else None
    except ValueError:
        from infra.verdict import Verdict

        _say(Verdict("refused", f"--keep {keep!r}: must be a whole number such as 3; nothing was changed", 2).line())
        raise Exit(code=2) from None
    _rollout_task(c, env, set_, lambda s, report: prune(s, keep=count, yes=yes, dry_run=dry_run, report=report))


@task(iterable=["set_"], help={"env": ENV_HELP, "set": SET_HELP, "json": "print one JSON document instead of tables"})
def status(c, env=None, set_=None, json=False):
    """Show launch template versions, instances and their health, the refresh, the upgrade and what prune would do."""
    from infra.rollout.status import status as run

    _rollout_task(c, env, set_, lambda s, report: run(s, as_json=json, report=report), verdict_to_stderr=json)


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "yes": "execute the change set without asking (a data-losing one is still refused)",
        "dry_run": "show the change set (or, for a new stack, what it would create) and execute nothing",
        "allow_data_loss": "execute even if the database, bucket, cache, key or a secret would be replaced or deleted",
    },
)
def deploy_stack(c, env=None, set_=None, yes=False, dry_run=False, allow_data_loss=False):
    """Create or update the environment's CloudFormation stack through a reviewed change set."""
    from infra.stack.deploy import Options
    from infra.stack.deploy import deploy_stack as deploy

    def confirm(prompt: str) -> bool:
        return input(prompt).strip().lower() in ("y", "yes")

    try:
        verdict = deploy(
            ROOT, _env(c, env), sets=set_ or [],
            options=Options(yes=yes, dry_run=dry_run, allow_data_loss=allow_data_loss),
            say=lambda line: print(line, flush=True), confirm=confirm if sys.stdin.isatty() else None,
        )
    except KeyboardInterrupt:
        raise Exit("interrupted; a stack operation already started goes on in CloudFormation: run deploy-stack "
                   "again to see where it is", code=130) from None
    print(verdict.line(), flush=True)
    if not verdict.ok:
        raise Exit(code=verdict.exit_code)


@task(
    iterable=["set_"],
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "dry_run": "show the one-shot instance it would start, start nothing",
        "timeout": "seconds to wait for the instance's report (default 1800)",
    },
)
def bootstrap_db(c, env=None, set_=None, dry_run=False, timeout=None):
    """Create the application's restricted database role once, from a one-shot instance inside the VPC."""
    from infra.stack.bootstrap import bootstrap_database

    try:
        verdict = bootstrap_database(ROOT, _env(c, env), sets=set_ or [], dry_run=dry_run,
                                     timeout_seconds=float(timeout or 1800), say=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        raise Exit("interrupted; a bootstrap instance it had started was removed", code=130) from None
    print(verdict.line(), flush=True)
    if not verdict.ok:
        raise Exit(code=verdict.exit_code)


@task(
    iterable=["scenario", "set_"],
    help={
        "env": ENV_HELP + "; the drills run on the local twin only",
        "set": SET_HELP,
        "scenario": "run only this scenario (repeatable): boot_storm, database, cache, broken, rolling (default: all)",
        "duration": "seconds the database or the cache stays away (default 60)",
        "rate": "requests per second through the balancer (default 5)",
        "instances": "fleet size for the failovers and the broken instance (default 2)",
        "deregistration_delay": "seconds a deregistered target may drain (default: the stack's, 60); shorter for "
                                "quick runs, and the record says so",
        "grace": "the group's health check grace period in seconds (default: the stack's, at least 600 on the "
                 "twin, whose boots take minutes); the record says which",
    },
)
def drill(c, env=None, set_=None, scenario=None, duration=None, rate=None, instances=None,
          deregistration_delay=None, grace=None):
    """Load and fault drills on the twin: HAProxy as the load balancer, a group stand-in, a fixed-rate load."""
    from infra.drill.run import DrillUsageError, choose, print_table, run_drills
    from infra.drill.scenarios import Options

    loaded = _load(c, env, set_)
    if loaded.settings.builder != "local":
        raise Exit(f"drill runs on the local twin; {loaded.settings.name} is {loaded.settings.builder}", code=2)

    def number(flag: str, value, low: float, high: float) -> float | None:
        if value is None:
            return None
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not low <= v <= high:
            raise Exit(f"--{flag} {value!r}: must be a number from {low:g} to {high:g}; nothing was run", code=2)
        return v

    try:
        names = choose(scenario)
    except DrillUsageError as exc:
        raise Exit(f"error: {exc}; nothing was run", code=2) from None
    opts = Options()
    opts.outage_s = number("duration", duration, 1, 3600) or opts.outage_s
    opts.rate = number("rate", rate, 0.1, 200) or opts.rate
    opts.instances = int(number("instances", instances, 2, 3) or opts.instances)
    delay = number("deregistration-delay", deregistration_delay, 0, 3600)
    grace_s = number("grace", grace, 0, 7200)
    try:
        results, path = run_drills(ROOT, loaded.settings, scenarios=names, opts=opts, deregistration_delay_s=delay,
                                   grace_s=grace_s)
    except KeyboardInterrupt:
        raise Exit("interrupted; everything was torn down (the record so far is in build/drill/)", code=130) from None
    except Exception as exc:  # the fleet could not start: a clear line, not a traceback
        from infra.drill.balancer import BalancerError
        from infra.localservices import ServiceError
        from infra.localtwin.test_ami import TestAmiError

        if isinstance(exc, (BalancerError, ServiceError, TestAmiError)):
            raise Exit(f"drill: {exc}", code=1) from None
        raise
    print_table(results)
    console.print(f"wrote {path.relative_to(ROOT)}")
    missed = [r.name for r in results if not r.passed]
    if missed:
        raise Exit(f"drill: target missed in {', '.join(missed)}", code=1)


ns = Collection(
    render, validate, build_ami, test_ami, sweep, check_updates, bench, rollout, rollback, upgrade, prune_amis,
    status,
    deploy_stack, bootstrap_db, lane, drill,
)
ns.configure(DEFAULTS)

if __name__ == "__main__":  # pragma: no cover - `inv` is the entry point
    sys.exit("run tasks with `inv`, e.g. `inv --list`")
