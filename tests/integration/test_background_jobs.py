"""Nextcloud's background jobs (bin/nextcloud-cron, what nextcloud-cron.service runs in the container every 5
minutes) against a real PostgreSQL and Redis: cron.php runs only on a ready node, never twice at once on one node.

Nextcloud's cron.php is the stand-in's test double (image/standin/nextcloud/cron.php), which records each run in the
database; the runner, readyz.php, lib.php and cluster.config.php are the image's own.
"""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ENTRYPOINT, occ_calls, query

pytestmark = pytest.mark.integration

CRON = ENTRYPOINT.parent / "nextcloud-cron"


def run_cron(node, **overrides: str) -> subprocess.CompletedProcess[str]:
    node.ensure_web_server()  # the runner asks readiness, which asks the node's status.php
    return subprocess.run([str(CRON)], env=node.env(**overrides), capture_output=True, text=True, timeout=60)


@pytest.fixture
def joined(make_node):
    installer = make_node("installer")
    rc, out = installer.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="0")  # arranging only
    assert rc == 0, out
    return installer


def test_a_ready_node_runs_cron_php_as_the_web_user(joined, pg):
    before = query(pg, "SELECT configvalue FROM oc_appconfig WHERE configkey = 'lastcron'")
    r = run_cron(joined)
    assert r.returncode == 0, r.stderr
    assert "cron.php finished" in r.stderr
    runs = occ_calls(pg, "cron.php")
    assert [(c[2], c[3]) for c in runs] == [(0, "jobs run")]
    assert query(pg, "SELECT configvalue FROM oc_appconfig WHERE configkey = 'lastcron'") != before


@pytest.mark.parametrize("breaker", ["redis", "maintenance", "not_joined"])
def test_a_node_that_is_not_ready_runs_nothing(joined, pg, services, make_node, breaker):
    node = joined
    if breaker == "redis":
        services[1].stop()
    elif breaker == "maintenance":
        drop_in = node.webroot / "config" / "zz-maintenance.config.php"
        drop_in.write_text("<?php\n$CONFIG = ['maintenance' => true];\n")
    else:
        node = make_node("fresh")  # its init never ran: no state, not joined
    r = run_cron(node)
    assert r.returncode == 0, r.stderr  # skipping is the intended outcome, not a failure
    assert "skipped: this node is not ready" in r.stderr or "skipped: no cluster state" in r.stderr, r.stderr
    assert occ_calls(pg, "cron.php") == []


def test_never_twice_at_once_on_one_node(joined, pg):
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(run_cron, joined, NEXTCLOUD_CRON_DOUBLE_DELAY="3")
        time.sleep(1)
        second = pool.submit(run_cron, joined, NEXTCLOUD_CRON_DOUBLE_DELAY="3")
        results = [first.result(), second.result()]
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert "skipped: the previous run on this node is still going" in results[1].stderr, results[1].stderr
    assert len(occ_calls(pg, "cron.php")) == 1
    # Once it is done, the next run goes ahead.
    assert run_cron(joined).returncode == 0
    assert len(occ_calls(pg, "cron.php")) == 2
