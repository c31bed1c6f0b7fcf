"""The short drills (issue 15) on the baked artifact: a database failover and a rolling replacement under load.

Two instances boot at once (the cluster's one install among them), then, under a fixed-rate load through HAProxy:
PostgreSQL away 30 s (only 503s while it is away, no instance replaced, serving again within seconds of its
return); then the fleet scales in to one and that one is replaced by a new instance, drained before it stops
(0 failed requests). Three boots under TCG, about 8 minutes; the full drills are `inv drill`. The deregistration
delay is 15 s here instead of the stack's 60 s (a target with nothing in flight drains at once either way).
Set SKIP_LOCAL_TWIN=1 to skip it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from infra.drill.fleet import Fleet
from infra.drill.scenarios import Options, database_failover, rolling_replacement
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("SKIP_LOCAL_TWIN") == "1", reason="SKIP_LOCAL_TWIN=1"),
]


def _say(message: str) -> None:
    print(message, flush=True)


@pytest.fixture(scope="module")
def fleet(local_artifact):
    settings = load_settings(ROOT, "local").settings
    with Fleet(ROOT, settings, log=_say, deregistration_delay_s=15, probe_interval_s=10) as f:
        f.ensure(2)
        yield f


def _show(result) -> None:
    print(json.dumps(dataclasses.asdict(result), indent=1))


def test_a_database_failover_gives_only_503s_while_it_is_away_and_replaces_nothing(fleet):
    result = database_failover(fleet, Options(rate=4, outage_s=30, instances=2))
    _show(result)
    assert result.passed, result.problems
    assert result.windows["away"]["failed"].get("http_503"), "the balancer never took the instances out"
    assert result.windows["before"]["failed_total"] == 0 and result.windows["after"]["failed_total"] == 0
    assert result.replaced == []
    assert len(result.details["in_service_after_return_s"]) == 2


def test_a_rolling_replacement_under_load_fails_no_request(fleet):
    result = rolling_replacement(fleet, Options(rate=4, old_instances=1))
    _show(result)
    assert result.load["sent"] > 0
    assert result.load["failed_total"] == 0, result.load
    assert result.passed, result.problems
    [step] = result.details["steps"]
    assert step["terminated"] not in fleet.members() and step["launched"] in fleet.members()
