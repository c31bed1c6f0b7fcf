"""The fleet: roll a new AMI out to the Auto Scaling group, roll it back, upgrade Nextcloud, show where it stands."""

from __future__ import annotations

from invoke import Context

from infra.rollout.outcome import CANCELLED, ROLLED_BACK, STILL_RUNNING
from infra.verdict import Verdict
from tasks.cli import (
    AWS_EXIT_CODES,
    DRY_RUN_HELP,
    ENV_HELP,
    ROOT,
    SET_HELP,
    YES_HELP,
    ask,
    console,
    load,
    pipeline_task,
)

AMI_HELP = "the AMI to roll out (default: the one in build/<env>/manifest.json, from `inv build-ami`)"
UNTESTED_HELP = "roll out an AMI that has not passed test-ami (prints a warning)"
ROLLOUT_EXIT_CODES = {
    **AWS_EXIT_CODES,
    ROLLED_BACK: "rolled back: AWS rolled the refresh back (an alarm, failing health checks); the old version serves",
    CANCELLED: "cancelled: somebody cancelled the refresh; instances replaced so far stay replaced",
    STILL_RUNNING: "still running: the wait timed out; the refresh goes on in AWS (`inv status` follows it)",
}
GOES_ON = "stopped by Ctrl-C; what already runs in AWS goes on: `inv status` shows where it stands"


def rollout_call(c: Context, env: str | None, sets: list[str] | None, run) -> Verdict:
    """Load the settings and run one infra.rollout function with a reporter; an AWS error it did not expect
    becomes a failure that says where to look."""
    import botocore.exceptions

    from infra.aws.session import AwsError, describe_client_error
    from infra.rollout.report import Reporter

    loaded = load(c, env, sets)
    try:
        return run(loaded.settings, Reporter(console))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise AwsError(f"{describe_client_error(exc)}; `inv status --env {loaded.settings.name}` shows where "
                       "things stand", exit_code=1) from None


@pipeline_task(
    help={"env": ENV_HELP, "set": SET_HELP, "ami": AMI_HELP, "dry_run": DRY_RUN_HELP, "yes": YES_HELP,
          "untested": UNTESTED_HELP},
    exit_codes=ROLLOUT_EXIT_CODES, interrupted=GOES_ON,
)
def rollout(c, env=None, set_=None, ami=None, dry_run=False, yes=False, untested=False):
    """Roll a new AMI out to the Auto Scaling group: pinned launch template version, instance refresh, auto-rollback."""
    from infra.rollout.rollout import run

    return rollout_call(c, env, set_, lambda s, report: run(
        s, ROOT, ami_id=ami, untested=untested, dry_run=dry_run, yes=yes, confirm=ask, report=report))


@pipeline_task(help={"env": ENV_HELP, "set": SET_HELP, "dry_run": DRY_RUN_HELP, "yes": YES_HELP},
               exit_codes=ROLLOUT_EXIT_CODES, interrupted=GOES_ON)
def rollback(c, env=None, set_=None, dry_run=False, yes=False):
    """Roll back the running instance refresh, or roll out again the AMI the group ran before."""
    from infra.rollout.rollback import rollback as run

    return rollout_call(c, env, set_, lambda s, report: run(s, ROOT, dry_run=dry_run, yes=yes, confirm=ask,
                                                           report=report))


@pipeline_task(
    help={"env": ENV_HELP, "set": SET_HELP, "ami": "the AMI with the newer Nextcloud (default: the manifest's)",
          "dry_run": DRY_RUN_HELP, "yes": YES_HELP, "untested": UNTESTED_HELP},
    exit_codes=ROLLOUT_EXIT_CODES, interrupted=GOES_ON + "; run upgrade again to resume",
)
def upgrade(c, env=None, set_=None, ami=None, dry_run=False, yes=False, untested=False):
    """Upgrade Nextcloud: maintenance on, the upgrade once from the new image, refresh, maintenance off (resumable)."""
    from infra.rollout.upgrade import upgrade as run

    return rollout_call(c, env, set_, lambda s, report: run(
        s, ROOT, ami_id=ami, untested=untested, dry_run=dry_run, yes=yes, confirm=ask, report=report))


@pipeline_task(help={"env": ENV_HELP, "set": SET_HELP,
                     "json": "print one JSON document instead of tables (the verdict goes to stderr)"})
def status(c, env=None, set_=None, json=False):
    """Show launch template versions, instances and their health, the refresh, the upgrade and what prune would do."""
    from infra.rollout.status import status as run

    return rollout_call(c, env, set_, lambda s, report: run(s, as_json=json, report=report))
