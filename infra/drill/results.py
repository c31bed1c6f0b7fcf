"""The drills' record: build/drill/results.json and the table `inv drill` prints."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from infra import build_record
from infra.drill.scenarios import ScenarioResult


def machine() -> dict[str, Any]:
    """Where the numbers come from: CPUs, memory, load average, kernel."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "memory_gib": round(mem_kib / 1024**2, 1),
            "load_average": [round(v, 2) for v in os.getloadavg()], "kernel": platform.release()}


def document(root: Path, manifest: dict[str, Any], results: Sequence[ScenarioResult], settings: dict[str, Any],
             machine_before: dict[str, Any], timeline: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": 1,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": build_record.git_sha(root),
        "artifact": {"id": manifest.get("artifact_id"), "sha256": manifest.get("sha256"),
                     "fingerprint": manifest.get("fingerprint")},
        "machine": {"before": machine_before, "after": machine()},
        "settings": settings,
        "scenarios": [dataclasses.asdict(r) for r in results],
        "instances": timeline,
    }


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)
    return path


def table(results: Sequence[ScenarioResult]) -> Table:
    t = Table(title="inv drill")
    for column in ("scenario", "result", "sent", "failed", "p50 ms", "p99 ms", "replaced", "seconds", "detail"):
        t.add_column(column, overflow="fold")
    for r in results:
        failed = ", ".join(f"{k} {v}" for k, v in r.load.get("failed", {}).items()) or "0"
        replaced = ", ".join(f"{x['instance']}->{x['replacement']}" for x in r.replaced) or "none"
        verdict = "[green]met[/]" if r.passed else "[red]MISSED[/]"
        detail = "; ".join(r.problems) if r.problems else r.target.split(",")[0]
        if f := r.details.get("figures"):  # the saturation drill: what the fleet served, and the connections it took
            detail = (f"{f['requests_per_s_at_saturation']}/s served at saturation "
                      f"({f['requests_per_s_per_instance']}/s per instance), p95 {f['p95_ms']} ms, "
                      f"{f['connections_peak']} of max_connections {f['max_connections']} at peak; {detail}")
        t.add_row(r.name, verdict, str(r.load.get("sent", 0)), failed, str(r.load.get("p50_ms")),
                  str(r.load.get("p99_ms")), replaced, str(r.seconds), detail)
    return t
