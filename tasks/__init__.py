"""The front door: `inv --list`. Tasks live by area (image, stack, fleet, twin) under flat names; every one goes
through tasks/cli.py (flags parsed and typed, one verdict line, one exit code, no automatic short flags)."""

from __future__ import annotations

from invoke import Collection

from tasks.cli import DEFAULTS
from tasks.fleet import rollback, rollout, status, upgrade
from tasks.image import build_ami, check_updates, prune_amis, render, sweep, test_ami, validate, verify_release
from tasks.stack import bootstrap_db, deploy_stack
from tasks.twin import bench, drill, lane

ns = Collection(
    render, validate, verify_release, build_ami, test_ami, check_updates, sweep, prune_amis,  # image
    deploy_stack, bootstrap_db,  # stack
    rollout, rollback, upgrade, status,  # fleet
    bench, lane, drill,  # twin
)
ns.configure(DEFAULTS)
