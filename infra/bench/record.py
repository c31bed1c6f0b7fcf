"""The result document (``build/bench/results.json``): what was measured, on what, and what it means."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from infra.bench import BenchError, now_iso
from infra.bench.stats import compute_ratios, evaluate_targets, paired_verdict, uncontended_view

SCHEMA = 1
RESULTS = Path("build") / "bench" / "results.json"


def merge_results(previous: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """Measurements of ``fresh`` over those of ``previous`` (a run of a subset keeps the others' numbers).

    Every measurement is labelled with the fingerprint of the artifact it was measured on; when they differ
    (the inputs changed between runs), ``mixed_artifacts`` lists them so the reader knows. Kept measurements still
    carry their own ``measured_at``; ratios, the paired boot verdict and the targets are recomputed over the merge.
    """
    measurements: dict[str, Any] = {}

    def labelled(doc: dict[str, Any]) -> dict[str, Any]:
        fp = (doc.get("artifact") or {}).get("fingerprint")
        return {k: {"artifact_fingerprint": fp, **v} for k, v in (doc.get("measurements") or {}).items()}

    if previous and previous.get("schema") == SCHEMA:
        measurements.update(labelled(previous))
    measurements.update(labelled(fresh))
    doc = {**fresh, "measurements": measurements}
    fingerprints = sorted({v["artifact_fingerprint"] for v in measurements.values() if v.get("artifact_fingerprint")})
    doc["mixed_artifacts"] = fingerprints if len(fingerprints) > 1 else None
    doc["ratios"] = compute_ratios(measurements)
    doc["paired"] = paired_verdict(measurements)
    doc["targets"] = evaluate_targets(measurements)
    doc["uncontended"] = uncontended_view(measurements)
    return doc


def read_results(path: Path) -> dict[str, Any]:
    """The last result document, or a BenchError saying how to get one."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path} not found: run the benchmark first (inv bench)", exit_code=2) from None
    except (OSError, ValueError) as e:
        raise BenchError(f"{path} cannot be read ({e}): run the benchmark again (inv bench)", exit_code=2) from None


def _first_line(cmd: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_facts(kernel: Path | None = None) -> dict[str, Any]:
    """Cores, CPU model, memory, kernel, QEMU and Packer versions, the accelerator the boots use (probed with
    ``kernel``) and the date: what the numbers depend on."""
    import psutil

    from infra.localtwin.accel import choose_accelerator

    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "date": now_iso(),
        "hostname": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "packer": _first_line(["packer", "version"]),
        "accelerator": choose_accelerator(kernel).describe() if kernel else "not probed",
        "loadavg_at_start": os.getloadavg()[0],
    }
