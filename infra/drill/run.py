"""`inv drill`: one fleet, the chosen scenarios in order, the record written whatever happened."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from infra.drill.fleet import Fleet
from infra.drill.results import document, machine, table, write
from infra.drill.saturation import SaturationOptions
from infra.drill.scenarios import SCENARIOS, Options, ScenarioResult
from infra.errors import Refusal
from infra.localtwin.instance import sigterm_raises

RESULTS = Path("build") / "drill" / "results.json"


class DrillUsageError(Refusal, ValueError):
    """A drill option is wrong; the message names it and the fix."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def choose(names: Sequence[str] | None) -> list[str]:
    """The scenarios to run, in their fixed order (every one when ``names`` is empty)."""
    unknown = sorted(set(names or ()) - set(SCENARIOS))
    if unknown:
        raise DrillUsageError(f"--scenario {', '.join(unknown)}: unknown; choose from {', '.join(SCENARIOS)}")
    return [n for n in SCENARIOS if not names or n in names]


def run_drills(root: Path, settings: Any, *, scenarios: Sequence[str] | None = None, opts: Options | None = None,
               deregistration_delay_s: float | None = None, probe_interval_s: float = 30.0,
               grace_s: float | None = None, log: Callable[[str], None] = _stderr,
               results_path: Path | None = None) -> tuple[list[ScenarioResult], Path]:
    """Run the drills; returns their results and where the record was written (written also after a failure)."""
    names = choose(scenarios)
    opts = opts or Options()
    if deregistration_delay_s is not None and deregistration_delay_s < 0:
        raise DrillUsageError("--deregistration-delay must be 0 or more seconds")
    if "saturation" in names:  # refused before anything boots
        SaturationOptions(instances=opts.instances, start_rate=opts.start_rate, max_rate=opts.max_rate,
                          hold_s=opts.hold_s).check()
    path = results_path or root / RESULTS
    before = machine()
    results: list[ScenarioResult] = []
    timeline: dict[str, Any] = {}
    with sigterm_raises(), Fleet(root, settings, log=log, deregistration_delay_s=deregistration_delay_s,
                                 probe_interval_s=probe_interval_s, grace_s=grace_s) as fleet:
        manifest = fleet.build
        run_settings = {"rate_per_s": opts.rate, "outage_s": opts.outage_s, "instances": opts.instances,
                        "saturation_max_rate_per_s": opts.max_rate, "saturation_hold_s": opts.hold_s,
                        "deregistration_delay_s": fleet.deregistration_delay_s,
                        "stack_deregistration_delay_s": fleet.tg.deregistration_delay_s,
                        "liveness_probe_interval_s": probe_interval_s, "grace_s": fleet.grace_s,
                        "stack_grace_s": fleet.stack_grace_s,
                        "health_check": {"path": fleet.tg.path, "interval_s": fleet.tg.interval_s,
                                         "timeout_s": fleet.tg.timeout_s, "unhealthy": fleet.tg.unhealthy_threshold,
                                         "healthy": fleet.tg.healthy_threshold}}
        try:
            for name in names:
                log(f"drill: scenario {name}")
                try:
                    results.append(SCENARIOS[name](fleet, opts))
                except Exception as exc:  # noqa: BLE001 - one broken scenario is recorded, the others still run
                    log(traceback.format_exc())
                    results.append(ScenarioResult(name, "", problems=[f"the drill itself failed: {exc}"]))
                write(path, document(root, manifest, results, run_settings, before, fleet.record()["timeline"]))
        finally:
            rec = fleet.record()
            timeline = {"timeline": rec["timeline"], "events": rec["events"], "replaced": rec["replaced"]}
            write(path, document(root, manifest, results, run_settings, before, timeline))
    return results, path


def print_table(results: Sequence[ScenarioResult]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)  # a log file: the table's columns need the room
    console.print(table(results))
