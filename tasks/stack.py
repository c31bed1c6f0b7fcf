"""The stack: the environment's CloudFormation stack and its database role."""

from __future__ import annotations

from tasks.cli import (
    AWS_EXIT_CODES,
    ENV_HELP,
    ROOT,
    SET_HELP,
    YES_HELP,
    Duration,
    ask_on_terminal,
    env_name,
    pipeline_task,
    say,
)


@pipeline_task(
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "yes": YES_HELP + "; a data-losing change set is still refused without --allow-data-loss",
        "dry_run": "show the change set (or, for a new stack, what it would create) and execute nothing",
        "allow_data_loss": "execute even if the database, bucket, cache, key or a secret would be replaced or deleted",
    },
    exit_codes={**AWS_EXIT_CODES, 3: "refused: the stack is busy or stuck in a state it cannot be updated from "
                                     "(the verdict says what to do)"},
    interrupted="stopped by Ctrl-C; a stack operation already started goes on in CloudFormation: run deploy-stack "
                "again to see where it is",
)
def deploy_stack(c, env=None, set_=None, yes=False, dry_run=False, allow_data_loss=False):
    """Create or update the environment's CloudFormation stack through a reviewed change set."""
    from infra.stack.deploy import Options
    from infra.stack.deploy import deploy_stack as deploy

    return deploy(ROOT, env_name(c, env), sets=set_ or [],
                  options=Options(yes=yes, dry_run=dry_run, allow_data_loss=allow_data_loss),
                  say=say, confirm=ask_on_terminal())


@pipeline_task(
    help={
        "env": ENV_HELP,
        "set": SET_HELP,
        "dry_run": "show the one-shot instance it would start, start nothing",
        "timeout": "how long to wait for the instance's report: seconds or 30m, 1h (default 1800)",
    },
    types={"timeout": Duration(1, 86400)},
    exit_codes=AWS_EXIT_CODES,
    interrupted="stopped by Ctrl-C; a bootstrap instance it had started was removed",
)
def bootstrap_db(c, env=None, set_=None, dry_run=False, timeout=None):
    """Create the application's restricted database role once, from a one-shot instance inside the VPC."""
    from infra.stack.bootstrap import bootstrap_database

    return bootstrap_database(ROOT, env_name(c, env), sets=set_ or [], dry_run=dry_run,
                              timeout_seconds=timeout or 1800, say=say)
