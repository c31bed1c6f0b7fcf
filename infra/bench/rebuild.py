"""The bake side: a no-op rebuild (with proof that no VM nor Packer started), the full bake's time, and the bake's
per-step times."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from infra import build_record
from infra.bench import Log, now_iso
from infra.bench.inputs import Inputs
from infra.bench.procwatch import is_bake, wait_for_quiet, watch_process_tree
from infra.bench.stats import summarize


def bake_breakdown(timings: dict[str, Any]) -> dict[str, Any]:
    """Per-step seconds from the Packer driver's timings (infra/packer.py), grouped the way a reader wants them.

    Provisioners are listed one by one; consecutive builder steps (boot, SSH wait, shutdown, ...) are listed too,
    so the steps add up to Packer's own total.
    """
    steps = [
        {"name": s.get("name") or "(unnamed)", "kind": s.get("kind", "builder"), "seconds": s.get("seconds") or 0.0}
        for s in timings.get("steps") or []
    ]
    by_kind: dict[str, float] = {}
    for s in steps:
        by_kind[s["kind"]] = round(by_kind.get(s["kind"], 0.0) + s["seconds"], 2)
    return {
        "packer_run_uuid": timings.get("packer_run_uuid"),
        "exit_code": timings.get("exit_code"),
        "total_seconds": timings.get("total_seconds"),
        "by_kind": by_kind,
        "provisioners": [s for s in steps if s["kind"] == "provisioner"],
        "steps": steps,
    }


def _scan_interval_ms(details: list[dict[str, Any]]) -> int | None:
    scans = sum(d.get("scans") or 0 for d in details)
    return round(1000 * sum(d["seconds"] for d in details) / scans) if scans else None


def noop_precondition(inputs: Inputs) -> str | None:
    """Why a rebuild now would not be a no-op (it would bake), or None when the artifact would be reused.

    Asks the bake driver's own reuse check with the current rendered fingerprint and cache keys, so the
    benchmark never starts a bake by accident when someone changed the inputs since the artifact was baked.
    """
    from infra.localtwin.build import BuildError, current_fingerprint, find_reusable_artifact

    build_dir = inputs.build_dir
    try:
        fingerprint = current_fingerprint(inputs.root, inputs.settings, build_dir, log=lambda _m: None)
    except (BuildError, RuntimeError) as e:
        return f"cannot tell whether a rebuild would be a no-op: {e}"
    if find_reusable_artifact(build_dir, fingerprint) is None:
        return (
            f"inputs changed since the artifact was baked (rendered fingerprint {fingerprint[:12]}, artifact "
            f"{inputs.fingerprint[:12]}, or the base disk / stand-in inputs): `inv build-ami` would bake, not reuse. "
            "Bake first (inv build-ami), then measure"
        )
    return None


def measure_noop(inputs: Inputs, runs: int, log: Log) -> dict[str, Any]:
    """`inv build-ami` with unchanged inputs, ``runs`` times; proof that no VM nor Packer started."""
    manifest_path = build_record.manifest_path(inputs.root, inputs.settings.name)
    reason = noop_precondition(inputs)
    if reason:
        return {"samples": [], "stats": summarize([]), "error": reason, "measured_at": now_iso()}
    # The artifact the rebuild must reuse: the one recorded for the current inputs (it may be newer than the one
    # this run booted, when someone baked in between).
    record = build_record.read(manifest_path) or inputs.artifact_record
    artifact = Path(str(record.get("artifact_id") or inputs.artifact.disk))
    before = (artifact.stat().st_mtime_ns, record.get("sha256"))
    inv = Path(sys.executable).with_name("inv")
    cmd = [str(inv), "build-ami", "--env", inputs.settings.name] if inv.exists() else [
        sys.executable, "-m", "infra.localtwin.build", inputs.settings.name]
    details, errors = [], []
    for n in range(1, runs + 1):
        log(f"bench: no-op rebuild {n}/{runs}: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(cmd))}")
        # Checked before every run: someone may re-render between runs, and then this would be a bake.
        reason = noop_precondition(inputs)
        if reason:
            errors.append(f"run {n}: not run: {reason}")
            break
        r = watch_process_tree(cmd, inputs.root, forbid=is_bake)
        if r["stopped"]:
            errors.append(f"run {n}: {r['stopped']} - the inputs changed during the run; the bake was stopped")
        try:
            manifest = build_record.read(manifest_path) or {"error": f"{manifest_path} not found"}
        except build_record.RecordError as e:
            manifest = {"error": str(e)}
        r["manifest_reused"] = manifest.get("reused")
        r["artifact_unchanged"] = (artifact.stat().st_mtime_ns, manifest.get("sha256")) == before
        if r["exit_code"] != 0:
            errors.append(f"run {n}: exit {r['exit_code']}: {r['output'][-300:]}")
        log(f"bench: no-op rebuild {n}/{runs}: {r['seconds']:.2f}s, reused={r['manifest_reused']}, "
            f"processes below it: {', '.join(r['process_names']) or 'none'}")
        details.append(r)
    ok = [d for d in details if d["exit_code"] == 0]
    samples = [d["seconds"] for d in ok]
    proof = {
        "no_vm_started": bool(ok) and all(
            d["manifest_reused"] is True and not d["qemu_seen"] and not d["packer_seen"] and d["artifact_unchanged"]
            for d in ok
        ),
        "manifest_reused": all(d["manifest_reused"] is True for d in ok) if ok else None,
        "qemu_seen": any(d["qemu_seen"] for d in details),
        "packer_seen": any(d["packer_seen"] for d in details),
        "artifact_unchanged": all(d["artifact_unchanged"] for d in details),
        "how": "process tree of the command (and the command itself) scanned with psutil every "
               f"{_scan_interval_ms(details)} ms on average; manifest.json says reused; artifact mtime and sha256 "
               "unchanged",
    }
    entry = {"command": " ".join(cmd), "artifact_reused": str(artifact), "samples": samples,
             "stats": summarize(samples), "details": details, "proof": proof, "measured_at": now_iso()}
    if errors:
        entry["error"] = "; ".join(errors)
    return entry


def full_bake_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The bake time the artifact's own record holds (infra/localtwin/build.py writes it)."""
    t = record.get("timings") or {}
    value = t.get("total_seconds")
    if value is None:
        return {"value": None, "error": "the manifest records no timings.total_seconds for this artifact"}
    return {
        "value": value,
        "packer_seconds": t.get("bake_seconds"),
        "parts": {k: v for k, v in t.items() if k.endswith("_seconds")},
        "source": f"manifest of the bake at {record.get('built_at', '?')}",
        "measured_at": record.get("built_at"),
    }


def fresh_full_bake(inputs: Inputs, log: Log, quiet_wait_s: float) -> dict[str, Any]:
    """A forced bake now (replaces the artifact of this fingerprint), timed end to end."""
    from infra.localtwin.build import build_local_image

    others = wait_for_quiet(log, max_wait_s=quiet_wait_s)
    started = time.monotonic()
    record = build_local_image(inputs.root, inputs.settings, force=True, log=log)
    value = round(time.monotonic() - started, 1)
    return {**full_bake_from_record(record), "value": value, "source": "fresh forced bake in this run",
            "measured_at": now_iso(), "other_qemu_at_start": others}


def measure_bake_steps(record: dict[str, Any]) -> dict[str, Any]:
    """Per-step times of the bake that produced the artifact, from the Packer driver's timings file."""
    recorded = Path(str((record.get("timings") or {}).get("packer_steps") or ""))
    # A copy beside the artifact (if the bake keeps one) survives later bakes; the build directory's does not.
    beside = Path(str(record.get("artifact_id") or "")).parent / "packer-timings.json"
    path = beside if record.get("artifact_id") and beside.is_file() else recorded
    if not path.is_file():
        return {"error": f"Packer timings file {path} not found; re-bake (inv build-ami --force) to record one"}
    timings = json.loads(path.read_text())
    out = {**bake_breakdown(timings), "source": str(path), "measured_at": record.get("built_at")}
    if timings.get("packer_run_uuid") != record.get("packer_run_uuid"):
        # The driver writes one timings file per build directory; a later (e.g. failed) bake overwrites it.
        out["error"] = (
            f"{path} belongs to Packer run {timings.get('packer_run_uuid') or '(failed run)'}, not to the "
            f"artifact's run {record.get('packer_run_uuid')}: a later bake overwrote it; re-bake to get its steps"
        )
        out["provisioners"] = []
    return out
