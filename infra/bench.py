"""`inv bench`: how much faster a baked image becomes ready than one set up at boot, measured on the local twin.

One run measures, one VM at a time, every boot timed from QEMU's start:

* ``boot_bare_s``: the floor: the base disk (the source-AMI stand-in) with the image's product-independent boot
  settings written in (FLOOR_FILES: SSH host key types, journald), boot -> SSH key login works.
* ``boot_baked_ready_s``: the baked artifact with test-ami's user data, boot -> ``GET /readyz`` 200.
* ``boot_seed_ready_s``: the base disk with user data that does at boot what the original setup did (apt
  update + upgrade, install Docker, fetch and load the Nextcloud image, build the derived image, write its
  environment, start it) -> ``GET /readyz`` 200.
* ``noop_rebuild_s``: ``inv build-ami`` with unchanged inputs, with proof that no VM (nor Packer) started;
  ``full_bake_s`` from the artifact's own bake record (or a fresh forced bake with ``full_bake=True``).
* ``bake_steps``: seconds per Packer step of the bake that produced the artifact (machine-readable output).
* ``footprint``: used bytes of the artifact's ext4 root filesystem (read offline with dumpe2fs), the artifact
  file's size, and the derived Nextcloud image's size (``docker image inspect`` on a baked boot).

Readiness is polled from the moment QEMU starts (every second, never waiting for SSH first), against
throwaway PostgreSQL/Redis on the host started exactly as test-ami starts them. Results go to
``build/bench/results.json`` and a table. The benchmark reports what it measures; missing a target is not a
failure, a measurement that could not be taken is recorded as an error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra import bootchain
from infra.localtwin.accel import choose_accelerator
from infra.localtwin.instance import Instance, InstanceError, sigterm_raises

SCHEMA = 1
RESULTS = Path("build") / "bench" / "results.json"
# Measurement names a developer can pick with --only, in the order a full run takes them. The baked boots run
# before the seed-style ones so that the first baked boot, not a seed one, performs the cluster's one install;
# the seed-style boots run last because they take longest.
MEASUREMENTS = ("bare", "baked", "noop", "bake", "footprint", "seed")
RESULT_KEYS = {
    "bare": "boot_bare_s",
    "baked": "boot_baked_ready_s",
    "seed": "boot_seed_ready_s",
    "noop": "noop_rebuild_s",
    "bake": "bake_steps",
    "footprint": "footprint",
}
GB = 10**9
# The targets. "≤ 3 GB" is read as decimal gigabytes.
TARGETS = (
    ("baked_vs_bare", "boot_baked_ready_s / boot_bare_s", "<=", 1.15),
    ("seed_vs_baked", "boot_seed_ready_s / boot_baked_ready_s", ">=", 5.0),
    ("noop_rebuild", "noop_rebuild_s", "<=", 5.0),
    ("footprint", "image_used_bytes / 1e9", "<=", 3.0),
)
POLL_S = 1.0
DEFAULT_TIMEOUT_S = 2400.0
# How long a boot waits for other QEMU processes (other people's bakes and boots) to end before it starts anyway
# and records them in the sample; and how long the services wait for their ports (a test-ami run holds them).
DEFAULT_QUIET_WAIT_S = 1800.0
DEFAULT_PORT_WAIT_S = 1800.0
# Where the guest finds the host's loopback on QEMU user-mode networking.
GUEST_HOST_IP = "10.0.2.2"

Log = Callable[[str], None]
# Set per run by run_bench (a one-element list: module state the boot helpers read, without threading it through).
QUIET_WAIT_S = [DEFAULT_QUIET_WAIT_S]


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says why and what to do."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---- statistics and targets (pure) ------------------------------------------------------------------------
def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """n, median, min, max and spread (max - min) of ``samples``; all None for no samples."""
    values = [float(s) for s in samples]
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "spread": None}
    lo, hi = min(values), max(values)
    return {
        "n": len(values),
        "median": round(statistics.median(values), 2),
        "min": round(lo, 2),
        "max": round(hi, 2),
        "spread": round(hi - lo, 2),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator rounded to 2 places; None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 2)


def _median(measurements: dict[str, Any], key: str) -> float | None:
    entry = measurements.get(key) or {}
    return (entry.get("stats") or {}).get("median")


def compute_ratios(measurements: dict[str, Any]) -> dict[str, float | None]:
    """Ratios of the medians: each boot against the bare floor, and seed-style against baked."""
    bare = _median(measurements, "boot_bare_s")
    baked = _median(measurements, "boot_baked_ready_s")
    seed = _median(measurements, "boot_seed_ready_s")
    return {
        "baked_vs_bare": ratio(baked, bare),
        "seed_vs_bare": ratio(seed, bare),
        "seed_vs_baked": ratio(seed, baked),
    }


def evaluate_targets(measurements: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured in this result set)."""
    ratios = compute_ratios(measurements)
    used = (measurements.get("footprint") or {}).get("image_used_bytes")
    values = {
        "baked_vs_bare": ratios["baked_vs_bare"],
        "seed_vs_baked": ratios["seed_vs_baked"],
        "noop_rebuild": _median(measurements, "noop_rebuild_s"),
        "footprint": round(used / GB, 3) if isinstance(used, int | float) else None,
    }
    out = []
    for name, expression, op, target in TARGETS:
        value = values[name]
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out.append({"name": name, "expression": expression, "op": op, "target": target, "value": value, "met": met})
    return out


def parse_dumpe2fs(text: str) -> dict[str, int]:
    """Block count, free blocks and block size from ``dumpe2fs -h`` output, plus the bytes they imply.

    ``used_bytes`` = (block count - free blocks) x block size: everything allocated, file data and the
    filesystem's own metadata (journal, inode tables), so it is a little above what ``df`` shows as Used.
    """
    fields = {}
    for label, key in (("Block count", "block_count"), ("Free blocks", "free_blocks"), ("Block size", "block_size")):
        m = re.search(rf"^{label}:\s+(\d+)\s*$", text, re.MULTILINE)
        if not m:
            raise BenchError(f"dumpe2fs output has no '{label}:' line; is this an ext2/3/4 filesystem?")
        fields[key] = int(m.group(1))
    if fields["free_blocks"] > fields["block_count"]:
        raise BenchError("dumpe2fs output reports more free blocks than blocks")
    fields["size_bytes"] = fields["block_count"] * fields["block_size"]
    fields["used_bytes"] = (fields["block_count"] - fields["free_blocks"]) * fields["block_size"]
    return fields


def select_measurements(only: Iterable[str] | None) -> list[str]:
    """Validate ``only`` (names or result keys, comma lists allowed) and return them in run order."""
    if not only:
        return list(MEASUREMENTS)
    if isinstance(only, str):  # `inv bench --only bare,baked` hands over one string
        only = [only]
    by_key = {v: k for k, v in RESULT_KEYS.items()}
    chosen = set()
    for item in only:
        for name in filter(None, (s.strip() for s in str(item).split(","))):
            name = by_key.get(name, name)
            if name not in MEASUREMENTS:
                raise BenchError(f"unknown measurement {name!r}; choose from {', '.join(MEASUREMENTS)}")
            chosen.add(name)
    return [m for m in MEASUREMENTS if m in chosen]


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


# ---- the result document ----------------------------------------------------------------------------------
def merge_results(previous: dict[str, Any] | None, fresh: dict[str, Any]) -> dict[str, Any]:
    """Measurements of ``fresh`` over those of ``previous`` (a run of a subset keeps the others' numbers).

    Every measurement is labelled with the fingerprint of the artifact it was measured on; when they differ
    (the inputs changed between runs), ``mixed_artifacts`` lists them so the reader knows. Kept measurements still
    carry their own ``measured_at``; ratios and targets are recomputed over the merge.
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
    doc["targets"] = evaluate_targets(measurements)
    doc["uncontended"] = uncontended_view(measurements)
    return doc


BOOT_KEYS = ("boot_bare_s", "boot_baked_ready_s", "boot_seed_ready_s")


def uncontended_view(measurements: dict[str, Any]) -> dict[str, Any]:
    """Stats and ratios over only the boots during which no other QEMU ran (at their start and their end).

    On a machine shared with other VMs the all-samples medians mix in CPU contention; this view does not.
    """
    view: dict[str, Any] = {}
    for key in BOOT_KEYS:
        details = (measurements.get(key) or {}).get("details") or []
        clean = [d["value_s"] for d in details if not d.get("other_qemu_at_start") and not d.get("other_qemu_at_end")]
        if details:
            view[key] = {"samples": clean, "stats": summarize(clean)}
    view["ratios"] = compute_ratios(view)
    return view


def _fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} s"


def _fmt_bytes(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / GB:.2f} GB" if v >= 0.1 * GB else f"{v / 1e6:.0f} MB"


def render_table(doc: dict[str, Any]) -> Any:
    """A rich Table of the result document: medians, spread, samples, ratio to bare, target and verdict."""
    from rich.table import Table

    m = doc.get("measurements") or {}
    ratios = doc.get("ratios") or compute_ratios(m)
    targets = {t["name"]: t for t in doc.get("targets") or evaluate_targets(m)}
    machine = doc.get("machine") or {}
    table = Table(
        title=f"bench --env {doc.get('env', '?')} · {machine.get('cpu_model', '?')} × {machine.get('cores', '?')}"
        f" · {doc.get('generated_at', '?')}",
        caption="boots timed from QEMU start under TCG (software emulation); medians; spread = max − min"
        + (
            f"\n[yellow]measured on different artifacts: {', '.join(f[:12] for f in doc['mixed_artifacts'])}[/]"
            if doc.get("mixed_artifacts")
            else ""
        ),
    )
    for col in ("measurement", "median", "min–max (spread)", "samples", "vs bare", "target", "met"):
        table.add_column(col, overflow="fold")

    def verdict(name: str) -> tuple[str, str]:
        t = targets.get(name)
        if not t:
            return "", ""
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "—"}[t["met"]]
        return f"{t['op']} {t['target']}" + ("×" if name.endswith(("bare", "baked")) else ""), met

    def timing_row(key: str, label: str, vs_bare: float | None, target: str) -> None:
        entry = m.get(key)
        if not entry:
            table.add_row(label, "not measured", "", "", "", *verdict(target) if target else ("", ""))
            return
        s = entry.get("stats") or {}
        if entry.get("error") and not s.get("n"):
            table.add_row(label, "[red]error[/]", entry["error"][:80], "", "", *verdict(target) if target else ("", ""))
            return
        spread = "—" if s.get("min") is None else f"{s['min']:.1f}–{s['max']:.1f} ({s['spread']:.1f})"
        clean = ((doc.get("uncontended") or {}).get(key) or {}).get("stats") or {}
        if clean and clean.get("n") != s.get("n"):
            spread += f"; no other VM: {_fmt_s(clean.get('median'))} (n={clean.get('n')})"
        samples = ", ".join(f"{x:.1f}" for x in entry.get("samples") or [])
        table.add_row(
            label,
            _fmt_s(s.get("median")),
            spread,
            samples,
            "" if vs_bare is None else f"{vs_bare:.2f}×",
            *(verdict(target) if target else ("", "")),
        )

    timing_row("boot_bare_s", "boot_bare_s (→ SSH)", 1.0 if _median(m, "boot_bare_s") else None, "")
    timing_row("boot_baked_ready_s", "boot_baked_ready_s (→ /readyz 200)", ratios.get("baked_vs_bare"), "baked_vs_bare")
    timing_row("boot_seed_ready_s", "boot_seed_ready_s (→ /readyz 200)", ratios.get("seed_vs_bare"), "")
    if ratios.get("seed_vs_baked") is not None:
        table.add_row("  seed / baked", f"{ratios['seed_vs_baked']:.2f}×", "", "", "", *verdict("seed_vs_baked"))
    noop = m.get("noop_rebuild_s")
    timing_row("noop_rebuild_s", "noop_rebuild_s (inv build-ami)", None, "noop_rebuild")
    if noop and noop.get("proof"):
        p = noop["proof"]
        table.add_row(
            "  no VM started",
            "[green]proven[/]" if p.get("no_vm_started") else "[red]NOT proven[/]",
            f"reused={p.get('manifest_reused')}, qemu={p.get('qemu_seen')}, packer={p.get('packer_seen')}",
            "", "", "", "",
        )
    full = m.get("full_bake_s")
    if full:
        table.add_row("full_bake_s", _fmt_s(full.get("value")), full.get("source", ""), "", "", "", "")
    bake = m.get("bake_steps")
    if bake and bake.get("provisioners"):
        for step in bake["provisioners"]:
            if step["seconds"] >= 0.5:
                table.add_row(f"  bake: {step['name']}", _fmt_s(step["seconds"]), "", "", "", "", "")
        builder = (bake.get("by_kind") or {}).get("builder")
        if builder is not None:
            table.add_row("  bake: builder (boot, SSH wait, shutdown, copy)", _fmt_s(builder), "", "", "", "", "")
    elif bake and bake.get("error"):
        table.add_row("bake_steps", "[red]error[/]", bake["error"][:80], "", "", "", "")
    fp = m.get("footprint")
    if fp:
        if fp.get("error") and fp.get("image_used_bytes") is None:
            table.add_row("image_used_bytes", "[red]error[/]", fp["error"][:80], "", "", *verdict("footprint"))
        else:
            table.add_row(
                "image_used_bytes (root fs)",
                _fmt_bytes(fp.get("image_used_bytes")),
                f"of {_fmt_bytes(fp.get('fs_size_bytes'))} fs",
                "", "", "≤ 3 GB", verdict("footprint")[1],
            )
            table.add_row("  artifact qcow2 file", _fmt_bytes(fp.get("artifact_file_bytes")), "", "", "", "", "")
            table.add_row(
                "  nextcloud image (derived)",
                _fmt_bytes(fp.get("nextcloud_image_bytes")),
                fp.get("nextcloud_image_note", ""),
                "", "", "", "",
            )
    return table


def markdown_summary(doc: dict[str, Any]) -> str:
    """The headline numbers as a Markdown table (for the README), with the machine and the date."""
    m = doc.get("measurements") or {}
    ratios = doc.get("ratios") or compute_ratios(m)
    targets = {t["name"]: t for t in doc.get("targets") or evaluate_targets(m)}
    mach = doc.get("machine") or {}

    def timing(key: str) -> tuple[str, str]:
        e = m.get(key) or {}
        st = e.get("stats") or {}
        if not st.get("n"):
            return ("error: " + e["error"][:60]) if e.get("error") else "not measured", ""
        return f"{st['median']:.1f} s", f"{st['min']:.1f}–{st['max']:.1f} s, n={st['n']}"

    def met(name: str) -> str:
        t = targets.get(name) or {}
        return {True: "met", False: "missed", None: "—"}[t.get("met")]

    fp = m.get("footprint") or {}
    full = m.get("full_bake_s") or {}
    proof = (m.get("noop_rebuild_s") or {}).get("proof") or {}
    rows = [
        ("boot_bare_s (→ SSH)", *timing("boot_bare_s"), "floor", ""),
        ("boot_baked_ready_s (→ /readyz 200)", *timing("boot_baked_ready_s"),
         f"{ratios.get('baked_vs_bare') or '—'}× bare (target ≤ 1.15×)", met("baked_vs_bare")),
        ("boot_seed_ready_s (→ /readyz 200)", *timing("boot_seed_ready_s"),
         f"{ratios.get('seed_vs_baked') or '—'}× baked (target ≥ 5×)", met("seed_vs_baked")),
        ("noop_rebuild_s", *timing("noop_rebuild_s"),
         "no VM started: " + ("proven" if proof.get("no_vm_started") else "not shown"), met("noop_rebuild")),
        ("full_bake_s", _fmt_s(full.get("value")), full.get("source", ""), "", ""),
        ("image_used_bytes", _fmt_bytes(fp.get("image_used_bytes")),
         f"qcow2 file {_fmt_bytes(fp.get('artifact_file_bytes'))}", "target ≤ 3 GB", met("footprint")),
        ("Nextcloud image (derived)", _fmt_bytes(fp.get("nextcloud_image_bytes")), "", "", ""),
    ]
    out = [
        f"Measured {doc.get('generated_at', '?')} on {mach.get('cores', '?')} cores of {mach.get('cpu_model', '?')}, "
        f"{mach.get('qemu') or 'QEMU ?'} (TCG), {mach.get('packer') or 'Packer ?'}.",
        "",
        "| measurement | median | spread | comparison | target |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(str(c) for c in r)} |" for r in rows],
    ]
    return "\n".join(out) + "\n"


# ---- machine facts -----------------------------------------------------------------------------------------
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
    cpu_model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1]) * 1024
    return {
        "date": _now_iso(),
        "hostname": socket.gethostname(),
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_bytes": mem,
        "kernel": platform.release(),
        "qemu": _first_line(["qemu-system-x86_64", "--version"]),
        "packer": _first_line(["packer", "version"]),
        "accelerator": choose_accelerator(kernel).describe() if kernel else "not probed",
        "loadavg_at_start": os.getloadavg()[0],
    }


# ---- processes (no psutil: /proc) ----------------------------------------------------------------------------
def _proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, executable basename of argv[0]) for every readable process."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            argv0 = Path(f"/proc/{entry.name}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        # The command name in stat is in parentheses and may hold spaces: split after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, os.path.basename(argv0))
    return table


def descendants(root_pid: int, table: dict[int, tuple[int, str]]) -> dict[int, str]:
    """pid -> name of every process below ``root_pid`` in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = {}, list(children.get(root_pid, []))
    while todo:
        pid = todo.pop()
        out[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return out


def qemu_pids(table: dict[int, tuple[int, str]] | None = None) -> list[int]:
    """Pids of every running qemu-system-* process."""
    table = _proc_table() if table is None else table
    return sorted(pid for pid, (_, name) in table.items() if name.startswith("qemu-system"))


def wait_for_quiet(log: Log, max_wait_s: float = 1800.0, own: Iterable[int] = ()) -> list[int]:
    """Wait until no other qemu-system process runs (another VM would steal the 2 cores); return those left.

    Gives up after ``max_wait_s`` and returns the still-running pids, which the sample then records.
    """
    mine = set(own)
    deadline = time.monotonic() + max_wait_s
    announced = False
    while True:
        others = [p for p in qemu_pids() if p not in mine]
        if not others or time.monotonic() > deadline:
            return others
        if not announced:
            log(f"bench: waiting for other QEMU processes to finish ({others}) so boots do not share the CPU")
            announced = True
        time.sleep(5)


# ---- boots -------------------------------------------------------------------------------------------------
class BenchInstance(Instance):
    """An Instance whose wait is the benchmark's: poll the target from QEMU's start, nothing else in between.

    Instance.wait() waits for SSH first and probes cloud-init over SSH while it polls /readyz; both would bias
    a readiness number. Here: ``until="ssh"`` polls the SSH banner and then a key login; ``until="ready"``
    polls ``GET /readyz`` every second from the start, and notes (for information) when the SSH banner
    first answered, with a non-blocking probe.
    """

    def measure(self, until: str, poll_s: float = POLL_S) -> dict[str, Any]:
        if until not in ("ssh", "ready"):
            raise ValueError(f"until must be 'ssh' or 'ready', not {until!r}")
        deadline = self._t0 + self.timeout_s
        sample: dict[str, Any] = {"ssh_banner_s": None, "ssh_login_s": None, "ready_s": None}
        last_status: Any = None
        last_note = 0.0
        while True:
            self._check_alive(f"waiting for {until}")
            if time.monotonic() > deadline:
                raise self._fail(f"waiting for {until}", f"timed out after {self.timeout_s:.0f}s; last {last_status}")
            if sample["ssh_banner_s"] is None and self._ssh_banner():
                sample["ssh_banner_s"] = round(self.elapsed(), 1)
                self._say("SSH banner")
            if until == "ssh" and sample["ssh_banner_s"] is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self.ssh("true", timeout=30).returncode == 0:
                        sample["ssh_login_s"] = round(self.elapsed(), 1)
                        self._say("SSH login works")
                        return sample
            if until == "ready":
                status = self._probe_ready()
                last_status = status
                if status == 200:
                    sample["ready_s"] = round(self.elapsed(), 1)
                    self._say("ready", f"{self.ready_path} 200")
                    return sample
            if self.elapsed() - last_note >= 30:
                last_note = self.elapsed()
                self._say(f"waiting for {until}", f"{self.ready_path} -> {last_status}" if until == "ready" else "")
            time.sleep(poll_s)

    def _probe_ready(self) -> int | None:
        try:
            with urllib.request.urlopen(self.http_base + self.ready_path, timeout=3) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except (OSError, ValueError):
            return None


@dataclass(frozen=True)
class BootTarget:
    """What one kind of boot starts from."""

    disk: Path
    kernel: Path
    initrd: Path


def _boot_once(
    kind: str,
    target: BootTarget,
    user_data: str,
    until: str,
    *,
    run: int,
    runs: int,
    timeout_s: float,
    log: Log,
    after: Callable[[BenchInstance], dict[str, Any]] | None = None,
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S,
) -> dict[str, Any]:
    """Boot ``target`` once, measure until ``until``, run ``after`` (not timed), tear down. Returns the sample."""
    others = wait_for_quiet(log, max_wait_s=quiet_wait_s)
    load = os.getloadavg()[0]
    log(f"bench: {kind} boot {run}/{runs} (load {load:.2f}) ...")
    inst = BenchInstance(
        target.disk, target.kernel, target.initrd, user_data,
        name=f"bench-{kind}-{run}", timeout_s=timeout_s, wait_ready=until == "ready", progress=log,
    )
    try:
        inst.start()
        sample = inst.measure(until)
        sample["other_qemu_at_start"] = others
        sample["loadavg_at_start"] = round(load, 2)
        sample["other_qemu_at_end"] = [p for p in qemu_pids() if p != (inst._proc.pid if inst._proc else None)]
        if after is not None:
            try:
                sample.update(after(inst))
            except (subprocess.SubprocessError, OSError, ValueError) as e:
                sample["after_error"] = str(e)
    finally:
        inst.stop()
    return sample


BootMaker = Callable[[int], tuple[BootTarget, str, Callable[[BenchInstance], dict[str, Any]] | None]]


def _measure_alternating(
    series: Sequence[tuple[str, BootMaker, str]], runs: int, timeout_s: float, log: Log
) -> list[dict[str, Any]]:
    """Boot each series ``runs`` times, taking turns (bare 1, baked 1, bare 2, baked 2, ...); one series alone
    is simply ``runs`` boots of it.

    Under TCG the whole guest runs slower for minutes at a time (the host's other tenants): with all bare boots
    first and all baked boots after, such a phase lands on one side of the ratio only. Taking turns spreads it
    over both. One entry per series, in the order given.
    """
    details: list[list[dict[str, Any]]] = [[] for _ in series]
    errors: list[list[str]] = [[] for _ in series]
    for n in range(1, runs + 1):
        for i, (kind, make, until) in enumerate(series):
            started = time.monotonic()
            try:
                target, user_data, after = make(n)
                sample = _boot_once(kind, target, user_data, until, run=n, runs=runs, timeout_s=timeout_s,
                                    log=log, after=after, quiet_wait_s=QUIET_WAIT_S[0])
            except (InstanceError, BenchError, subprocess.CalledProcessError) as e:
                errors[i].append(f"run {n}: {str(e).splitlines()[0]}")
                log(f"bench: {kind} boot {run_label(n, runs)} FAILED: {e}")
                continue
            sample["value_s"] = sample["ssh_login_s"] if until == "ssh" else sample["ready_s"]
            sample["wall_s"] = round(time.monotonic() - started, 1)
            sample["turn"] = n
            details[i].append(sample)
            log(f"bench: {kind} boot {run_label(n, runs)}: {sample['value_s']:.1f}s")
    entries = []
    for i, (_, _, until) in enumerate(series):
        samples = [d["value_s"] for d in details[i]]
        entry = {"samples": samples, "stats": summarize(samples), "details": details[i], "measured_at": _now_iso(),
                 "until": "SSH key login" if until == "ssh" else "GET /readyz 200",
                 "alternated_with": [k for j, (k, _, _) in enumerate(series) if j != i]}
        if errors[i]:
            entry["error"] = "; ".join(errors[i])
        entries.append(entry)
    return entries


def run_label(n: int, runs: int) -> str:
    return f"{n}/{runs}"


# ---- the floor: the base disk with the image's product-independent boot settings ---------------------------
# What the baked image changes about booting that has nothing to do with Nextcloud. Without them the bare boot
# generates RSA 3072 and DSA host keys the baked image no longer does (~10 s under TCG) and the ratio flatters the
# product; with them the ratio measures only what the product adds. Paths are in image/rootfs.
FLOOR_FILES = (
    "etc/cloud/cloud.cfg.d/50-nextcloud-image.cfg",
    "etc/systemd/journald.conf.d/50-nextcloud-image.conf",
    "etc/systemd/system/cloud-config.service.d/50-nextcloud-image.conf",
    "etc/systemd/system/cloud-final.service.d/50-nextcloud-image.conf",
)
FLOOR_CACHE = Path("build") / "cache" / "floor"


def _debugfs_write(disk: Path, requests: Sequence[str]) -> None:
    proc = subprocess.run(["debugfs", "-w", "-f", "-", str(disk)], input="\n".join(requests) + "\n",
                          capture_output=True, text=True, check=False)
    # mkdir of a directory that exists is expected (parents are created on the way); anything else is an error.
    bad = [line for line in proc.stderr.splitlines() if line.strip() and "already exists" not in line
           and not line.startswith("debugfs ")]
    if proc.returncode != 0 or bad:
        raise BenchError(f"debugfs could not write the floor settings into {disk}: {'; '.join(bad)[:400]}")


def floor_disk(root: Path, base: BootTarget, log: Log = _log) -> BootTarget:
    """The base disk with FLOOR_FILES written in (a private copy, cached by content; the base disk is untouched)."""
    sources = [root / "image" / "rootfs" / rel for rel in FLOOR_FILES]
    key_src = [str(base.disk.resolve()), str(base.disk.stat().st_size), str(base.disk.stat().st_mtime_ns)]
    key_src += [f"{rel}\0{p.read_text()}" for rel, p in zip(FLOOR_FILES, sources, strict=True)]
    key = hashlib.sha256("\n".join(key_src).encode()).hexdigest()
    entry = root / FLOOR_CACHE / key
    disk = entry / "floor.raw"
    if not disk.is_file():
        log(f"bench: writing the floor disk (base disk + {', '.join(FLOOR_FILES)}) ...")
        entry.mkdir(parents=True, exist_ok=True)
        tmp = entry / f".floor-{os.getpid()}.raw"
        subprocess.run(["cp", "--sparse=always", str(base.disk), str(tmp)], check=True)
        requests = []
        for rel, src in zip(FLOOR_FILES, sources, strict=True):
            parts = rel.split("/")[:-1]
            requests += [f"mkdir /{'/'.join(parts[:i])}" for i in range(1, len(parts) + 1)]
            requests += [f"write {src} /{rel}", f"sif /{rel} mode 0100644", f"sif /{rel} uid 0", f"sif /{rel} gid 0"]
        _debugfs_write(tmp, requests)
        tmp.rename(disk)
    return BootTarget(disk, base.kernel, base.initrd)


def _docker_volumes(inst: BenchInstance) -> dict[str, Any]:
    """How many Docker volumes the instance has after its container started (each one a copy of a webroot)."""
    r = inst.ssh("sudo docker volume ls --quiet | wc -l; sudo du -sm /var/lib/docker/volumes | cut -f1", timeout=120)
    lines = r.stdout.split()
    return {"docker_volumes": int(lines[0]), "docker_volumes_mb": int(lines[1])} if len(lines) == 2 else {}


def _boot_chain(inst: BenchInstance, log: Log) -> dict[str, Any]:
    """What the boot waited on (infra/bootchain.py), read after it was measured, so not part of the time."""
    chain = bootchain.read(inst)
    log(f"bench: {inst.name} chain (s after the kernel started): {chain.get('error') or bootchain.summary(chain)}")
    return {"boot_chain": chain}


def _host_key_types(inst: BenchInstance) -> dict[str, Any]:
    r = inst.ssh("ls /etc/ssh/ | sed -n 's/^ssh_host_\\(.*\\)_key\\.pub$/\\1/p'", timeout=60)
    return {"host_key_types": sorted(r.stdout.split())}


# ---- seed-style boot ---------------------------------------------------------------------------------------
SEED_SETUP = r"""#!/usr/bin/env bash
# Benchmark only (infra/bench.py): what the original setup's user data did at every boot, so the
# baked image can be compared with it. Update and upgrade packages, install Docker, pull the
# Nextcloud image (by digest, from the twin's loopback registry), build the derived image, write
# its environment, start it. The project's sources come from a throwaway HTTP server on the host.
# The steps reuse the bake's own scripts, so they do exactly what the bake does, only at boot.
set -o errexit -o nounset -o pipefail

base_url="$1"
nextcloud_image="$2"
fingerprint="$3"
docker_packages="$4"
insecure_registry="$5"
staging=/tmp/nextcloud-image
timings=/var/log/seed-setup-timings.tsv
export DEBIAN_FRONTEND=noninteractive

step() {
  local name="$1" start end
  shift
  start="$(date +%s%N)"
  "$@"
  end="$(date +%s%N)"
  printf '%s\t%s\n' "${name}" "$(( (end - start) / 1000000 ))" >> "${timings}"
}

apt_update_upgrade() {
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold upgrade -y -qq
}

fetch_image_sources() {
  install -d -m 0700 "${staging}"
  curl -fsS --retry 5 "${base_url}/image.tar.gz" | tar -xz -C "${staging}"
  curl -fsS --retry 5 -o "${staging}/nextcloud.env" "${base_url}/nextcloud.env"
  curl -fsS --retry 5 -o "${staging}/secret-references.json" "${base_url}/secret-references.json"
}

: > "${timings}"
step apt_update_upgrade apt_update_upgrade
step fetch_image_sources fetch_image_sources
step install_docker env DOCKER_VERSION=debian DOCKER_PACKAGES="${docker_packages}" STAGING_DIR="${staging}" \
  "${staging}/scripts/install-docker.sh"
step load_nextcloud_image env NEXTCLOUD_IMAGE="${nextcloud_image}" INSECURE_REGISTRY="${insecure_registry}" \
  "${staging}/scripts/cache-nextcloud-image.sh"
step build_nextcloud_image env NEXTCLOUD_IMAGE="${nextcloud_image}" FINGERPRINT="${fingerprint}" \
  BUILD_CONTEXT="${staging}/nextcloud" "${staging}/scripts/build-nextcloud-image.sh"
step write_environment_and_units env STAGING_DIR="${staging}" "${staging}/scripts/install-units.sh"
# --no-block: runcmd runs inside cloud-final.service; the container start must not wait on it.
step start_nextcloud systemctl start --no-block nextcloud.service
"""

SEED_SCRIPT_PATH = "/usr/local/sbin/seed-setup"


def seed_user_data(base_user_data: str, base_url: str, nextcloud_image: str, fingerprint: str,
                   docker_packages: str = "docker.io", insecure_registry: str = "") -> str:
    """test-ami's rendered user data plus the seed-style setup: the script and a runcmd that runs it."""
    data = yaml.safe_load(base_user_data) or {}
    if not isinstance(data, dict):
        raise BenchError("rendered user data is not a cloud-config mapping")
    data.setdefault("write_files", []).append(
        {"path": SEED_SCRIPT_PATH, "owner": "root:root", "permissions": "0755", "content": SEED_SETUP}
    )
    data.setdefault("runcmd", []).append(
        [SEED_SCRIPT_PATH, base_url, nextcloud_image, fingerprint, docker_packages, insecure_registry])
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def image_sources_tarball(image_dir: Path) -> bytes:
    """image/ as a gzipped tarball (what Packer's file provisioner uploads), without caches."""
    buf = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name.split("/") else info

    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for child in sorted(image_dir.iterdir()):
            tar.add(child, arcname=child.name, filter=keep)
    return buf.getvalue()


@contextlib.contextmanager
def loopback_http_server(directory: Path):
    """A throwaway HTTP server on 127.0.0.1 serving ``directory``; yields its port. Stopped on exit."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _seed_qcow2(base_disk: Path, size_gb: int, workdir: Path) -> Path:
    """A qcow2 over the raw base disk with the image's volume size, as an EC2 instance's root volume would be."""
    path = workdir / "seed-root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base_disk.resolve()), "-F", "raw", str(path),
         f"{size_gb}G"],
        check=True, capture_output=True,
    )
    return path


def _seed_step_timings(inst: BenchInstance) -> dict[str, Any]:
    r = inst.ssh("sudo cat /var/log/seed-setup-timings.tsv", timeout=60)
    steps = {}
    for line in r.stdout.splitlines():
        name, _, ms = line.partition("\t")
        if ms.strip().isdigit():
            steps[name] = round(int(ms) / 1000, 1)
    return {"seed_steps_s": steps}


# ---- inputs of the run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    root: Path
    settings: Any
    artifact: BootTarget
    artifact_record: dict[str, Any]
    base: BootTarget
    fingerprint: str


def load_inputs(root: Path, settings: Any) -> Inputs:
    """The artifact from build/<env>/manifest.json and the base disk it was baked from."""
    from infra.localtwin import base_disk
    from infra.localtwin.test_ami import TestAmiError, read_manifest

    manifest_path = root / "build" / settings.name / "manifest.json"
    try:
        art = read_manifest(manifest_path, root)
    except TestAmiError as e:
        raise BenchError(str(e)) from None
    record = json.loads(manifest_path.read_text())
    key = record.get("base_disk_key") or base_disk.base_disk_key()
    entry = base_disk.DEFAULT_CACHE / key
    base = BootTarget(entry / "disk.raw", entry / "vmlinuz", entry / "initrd.img")
    if not all(p.is_file() for p in (base.disk, base.kernel, base.initrd)):
        raise BenchError(
            f"the base disk the artifact was baked from ({entry}) is not in the cache: run "
            "`python -m infra.localtwin.base_disk` (or re-bake with `inv build-ami --force`)"
        )
    return Inputs(
        root=root, settings=settings, artifact=BootTarget(art.disk, art.kernel, art.initrd),
        artifact_record=record, base=base, fingerprint=str(record.get("fingerprint", "")),
    )


# ---- no-op rebuild and full bake ---------------------------------------------------------------------------
def _is_bake(name: str) -> bool:
    return name == "packer" or name.startswith("qemu-system")


def _stop_tree(pid: int) -> None:
    """SIGTERM ``pid`` and everything below it (deepest first), SIGKILL what is left after 10 s."""
    import signal

    for sig, pause in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
        pids = [*sorted(descendants(pid, _proc_table()), reverse=True), pid]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.2)


def watch_process_tree(
    cmd: Sequence[str], cwd: Path, interval_s: float = 0.02, forbid: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """Run ``cmd``, sampling its process tree every ``interval_s``; report what ran below it and how long.

    A VM boot lasts minutes, so the sampling cannot miss one. When a process ``forbid`` matches appears (a bake
    starting, because the inputs changed under us), the whole tree is stopped at once and ``stopped`` says why.
    """
    seen: dict[int, str] = {}
    stopped = None
    started = time.monotonic()
    proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out_chunks: list[str] = []
    reader = threading.Thread(target=lambda: out_chunks.append(proc.stdout.read() if proc.stdout else ""))
    reader.start()
    samples = 0
    while proc.poll() is None:
        table = _proc_table()
        if proc.pid in table:  # the command itself may exec into something else
            seen[proc.pid] = table[proc.pid][1]
        seen.update(descendants(proc.pid, table))
        samples += 1
        if forbid is not None and any(forbid(n) for n in seen.values()):
            stopped = f"stopped: {', '.join(sorted({n for n in seen.values() if forbid(n)}))} started"
            _stop_tree(proc.pid)
            break
        time.sleep(interval_s)
    proc.wait()
    elapsed = time.monotonic() - started
    reader.join()
    names = sorted(set(seen.values()))
    return {
        "seconds": round(elapsed, 2),
        "exit_code": proc.returncode,
        "output": "".join(out_chunks)[-2000:],
        "process_names": names,
        "scans": samples,
        "qemu_seen": any(n.startswith("qemu-system") for n in names),
        "packer_seen": "packer" in names,
        "stopped": stopped,
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

    build_dir = inputs.root / "build" / inputs.settings.name
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
    manifest_path = inputs.root / "build" / inputs.settings.name / "manifest.json"
    reason = noop_precondition(inputs)
    if reason:
        return {"samples": [], "stats": summarize([]), "error": reason, "measured_at": _now_iso()}
    # The artifact the rebuild must reuse: the one recorded for the current inputs (it may be newer than the one
    # this run booted, when someone baked in between).
    record = json.loads(manifest_path.read_text()) if manifest_path.is_file() else inputs.artifact_record
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
        r = watch_process_tree(cmd, inputs.root, forbid=_is_bake)
        if r["stopped"]:
            errors.append(f"run {n}: {r['stopped']} - the inputs changed during the run; the bake was stopped")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as e:
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
        "how": "process tree of the command (and the command itself) scanned via /proc every "
               f"{_scan_interval_ms(details)} ms on average; manifest.json says reused; artifact mtime and sha256 "
               "unchanged",
    }
    entry = {"command": " ".join(cmd), "artifact_reused": str(artifact), "samples": samples,
             "stats": summarize(samples), "details": details,
             "proof": proof, "measured_at": _now_iso()}
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


def fresh_full_bake(inputs: Inputs, log: Log) -> dict[str, Any]:
    """A forced bake now (replaces the artifact of this fingerprint), timed end to end."""
    from infra.localtwin.build import build_local_image

    others = wait_for_quiet(log)
    started = time.monotonic()
    record = build_local_image(inputs.root, inputs.settings, force=True, log=log)
    value = round(time.monotonic() - started, 1)
    return {**full_bake_from_record(record), "value": value, "source": "fresh forced bake in this run",
            "measured_at": _now_iso(), "other_qemu_at_start": others}


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


# ---- footprint -----------------------------------------------------------------------------------------------
LAYERDB = "/var/lib/docker/image/overlay2/layerdb/sha256"


def _debugfs(raw: Path, request: str) -> str:
    return subprocess.run(["debugfs", "-R", request, str(raw)], capture_output=True, text=True, check=False).stdout


def docker_layers_bytes(raw: Path) -> int | None:
    """Sum of the ``size`` files of every layer in the image's Docker store, read offline with debugfs.

    The store holds the base image and the derived image built on it, which shares the base's layers: the sum
    is the derived image's size as ``docker image inspect`` reports it. None when there is no Docker store.
    """
    listing = _debugfs(raw, f"ls -p {LAYERDB}")
    names = [f[4] for line in listing.splitlines() if len(f := line.strip("/").split("/")) > 4 and len(f[4]) == 64]
    sizes = [_debugfs(raw, f"cat {LAYERDB}/{n}/size").strip() for n in names]
    return sum(int(x) for x in sizes if x.isdigit()) if names else None


def filesystem_usage(qcow2: Path, workdir: Path) -> dict[str, int]:
    """Used bytes of the ext4 filesystem in ``qcow2`` (whole-disk ext4, no partition table), read offline; plus
    ``docker_layers_bytes`` (see :func:`docker_layers_bytes`) when the image has a Docker store."""
    raw = workdir / "footprint.raw"
    try:
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True, capture_output=True)
        out = subprocess.run(["dumpe2fs", "-h", str(raw)], check=True, capture_output=True, text=True).stdout
        fs = parse_dumpe2fs(out)
        layers = docker_layers_bytes(raw)
        if layers is not None:
            fs["docker_layers_bytes"] = layers
    finally:
        raw.unlink(missing_ok=True)
    return fs


def measure_footprint(inputs: Inputs, workdir: Path, image_bytes: int | None, image_note: str) -> dict[str, Any]:
    disk = inputs.artifact.disk
    fs = filesystem_usage(disk, workdir)
    st = disk.stat()
    if image_bytes is None and fs.get("docker_layers_bytes"):
        image_bytes = fs["docker_layers_bytes"]
        image_note = "sum of the Docker store's layer sizes, read offline from the artifact"
    return {
        "image_used_bytes": fs["used_bytes"],
        "fs_size_bytes": fs["size_bytes"],
        "dumpe2fs": fs,
        "artifact_file_bytes": st.st_size,
        "artifact_allocated_bytes": st.st_blocks * 512,
        "nextcloud_image_bytes": image_bytes,
        "nextcloud_image_note": image_note,
        "how": "qemu-img convert -O raw (sparse temp file) + dumpe2fs -h: (block count - free blocks) x block "
               "size, i.e. file data plus filesystem metadata (journal, inode tables)",
        "measured_at": _now_iso(),
    }


def _docker_image_sizes(inst: BenchInstance, base_image: str) -> dict[str, Any]:
    """Sizes of the derived and the base Nextcloud image, as Docker on a baked instance reports them."""
    fmt = "'{{.Size}}'"
    r = inst.ssh(f"sudo docker image inspect --format {fmt} nextcloud-cluster:current {base_image}", timeout=120)
    sizes = [int(x) for x in r.stdout.split() if x.isdigit()]
    out: dict[str, Any] = {}
    if sizes:
        out["nextcloud_image_bytes"] = sizes[0]
    if len(sizes) > 1:
        out["nextcloud_base_image_bytes"] = sizes[1]
    return out


def _installed_here(inst: BenchInstance) -> dict[str, Any]:
    r = inst.ssh("sudo journalctl --no-pager -o cat -u nextcloud.service | grep -c 'installed Nextcloud ' || true",
                 timeout=60)
    text = r.stdout.strip()
    return {"installed_cluster_on_this_boot": int(text) > 0} if text.isdigit() else {}


# ---- the run ----------------------------------------------------------------------------------------------------
def run_bench(
    root: Path,
    settings: Any,
    runs: int = 3,
    only: list[str] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    seed_runs: int | None = None,
    full_bake: bool = False,
    log: Log = _log,
    results_path: Path | None = None,
    show_table: bool = True,
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S,
    port_wait_s: float = DEFAULT_PORT_WAIT_S,
) -> dict:
    """Measure, write ``build/bench/results.json`` (merged with earlier results for the same artifact when only a
    subset runs) and return the result document. ``runs`` boots per boot measurement (``seed_runs`` overrides it
    for the slow seed-style boots), ``only`` picks measurements (see MEASUREMENTS), ``timeout_s`` bounds each
    boot, ``full_bake`` bakes afresh (forced) for ``full_bake_s`` instead of reading the artifact's record.
    Prints the table at the end unless ``show_table`` is False. ``quiet_wait_s``: how long each boot waits for
    other QEMU processes to end first; ``port_wait_s``: how long to wait for the services' ports.
    """
    QUIET_WAIT_S[0] = quiet_wait_s
    if runs < 1:
        raise BenchError("runs must be at least 1")
    chosen = select_measurements(only)
    inputs = load_inputs(root, settings)
    results_path = results_path or root / RESULTS
    log(f"bench: artifact {inputs.artifact.disk} (fingerprint {inputs.fingerprint[:12]}); measuring "
        f"{', '.join(chosen)}; {runs} run(s) each" + (f", seed {seed_runs}" if seed_runs else ""))
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "env": settings.name,
        "generated_at": _now_iso(),
        "machine": machine_facts(inputs.artifact.kernel),
        "artifact": {k: inputs.artifact_record.get(k) for k in ("artifact_id", "fingerprint", "sha256", "built_at")},
        "options": {"runs": runs, "seed_runs": seed_runs or runs, "only": chosen, "timeout_s": timeout_s,
                    "full_bake": full_bake},
        "measurements": {},
        "notes": [
            "Boots run one at a time under QEMU (machine.accelerator says which) and are timed from QEMU's start.",
            "Readiness is polled every second from QEMU's start; SSH is not waited for first.",
            "Seed-style fetches the stand-in base archive and image/ from a loopback HTTP server and builds the "
            "derived image at boot; it stands in for `docker pull` from a registry (slower on the wire, faster "
            "than a build).",
            "All baked and seed-style boots share one PostgreSQL/Redis: the first ready boot installs the cluster, "
            "the others join it, as scale-out instances do (see installed_cluster_on_this_boot per sample).",
        ],
    }
    m = doc["measurements"]
    started = time.monotonic()
    previous = None
    if only and results_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(results_path.read_text())

    def save() -> dict[str, Any]:
        # After every measurement: an interrupted or timed-out run keeps what it has measured so far.
        doc["elapsed_s"] = round(time.monotonic() - started, 1)
        merged = merge_results(previous, doc)
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(merged, indent=2) + "\n")
        return merged

    image_info: dict[str, Any] = {}
    boots = [x for x in chosen if x in ("bare", "baked", "seed")]
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_raises())  # `kill` tears VMs, services and temp files down too
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-", dir=_tmp_parent(root))))
        user_data = None
        services_up = False
        if boots:
            user_data, canaries = _user_data(settings)

        def services() -> None:
            # Only the readiness boots need them: bare boots can run while another run holds the ports.
            nonlocal services_up
            if not services_up:
                _start_services(stack, settings, canaries, log, port_wait_s)
                services_up = True
        # Bare and baked boots take turns (_measure_alternating): the ratio is taken within one run.
        series: list[tuple[str, str, BootMaker, str]] = []
        if "bare" in chosen:
            assert user_data is not None
            floor = floor_disk(root, inputs.base, log)

            def after_bare(inst: BenchInstance) -> dict[str, Any]:
                chain = _boot_chain(inst, log)  # first: it waits out an sshd restart (bootchain.read)
                return {**_host_key_types(inst), **chain}

            series.append(("bare", "boot_bare_s", lambda n: (floor, user_data, after_bare), "ssh"))
        if "baked" in chosen:
            assert user_data is not None
            services()

            def after_baked(inst: BenchInstance) -> dict[str, Any]:
                chain = _boot_chain(inst, log)  # first: it waits out an sshd restart (bootchain.read)
                if not image_info:
                    image_info.update(_docker_image_sizes(inst, _nextcloud_image(inputs)))
                return {**_installed_here(inst), **_host_key_types(inst), **_docker_volumes(inst), **chain}

            series.append(("baked", "boot_baked_ready_s", lambda n: (inputs.artifact, user_data, after_baked),
                           "ready"))
        if series:
            entries = _measure_alternating([(kind, make, until) for kind, _, make, until in series], runs,
                                           timeout_s, log)
            for (_, key, _, _), entry in zip(series, entries, strict=True):
                m[key] = entry
            if "boot_bare_s" in m:
                m["boot_bare_s"]["floor_files"] = list(FLOOR_FILES)
            save()
        if "noop" in chosen:
            m["noop_rebuild_s"] = measure_noop(inputs, runs, log)
        if "bake" in chosen or "noop" in chosen:
            if full_bake:
                m["full_bake_s"] = fresh_full_bake(inputs, log)
                inputs = load_inputs(root, settings)
            else:
                m["full_bake_s"] = full_bake_from_record(inputs.artifact_record)
        if "bake" in chosen:
            try:
                m["bake_steps"] = measure_bake_steps(inputs.artifact_record)
            except (OSError, ValueError) as e:
                m["bake_steps"] = {"error": str(e)}
        save()
        if "footprint" in chosen:
            note = "docker image inspect on the first baked boot" if image_info.get("nextcloud_image_bytes") else (
                "not measured: needs a baked boot in the same run (--only footprint,baked)")
            if not image_info.get("nextcloud_image_bytes") and previous:
                # An earlier run's baked boot of this artifact measured it (merge_results keeps same-artifact only).
                old = (previous.get("measurements") or {}).get("footprint") or {}
                if (previous.get("artifact") or {}).get("fingerprint") == inputs.fingerprint and old.get(
                    "nextcloud_image_bytes"
                ):
                    image_info["nextcloud_image_bytes"] = old["nextcloud_image_bytes"]
                    note = f"from the baked boot of the run at {old.get('measured_at', '?')}"
            try:
                fp = measure_footprint(inputs, workdir, image_info.get("nextcloud_image_bytes"), note)
                if image_info.get("nextcloud_base_image_bytes"):
                    fp["nextcloud_base_image_bytes"] = image_info["nextcloud_base_image_bytes"]
                m["footprint"] = fp
            except (subprocess.CalledProcessError, BenchError, OSError) as e:
                detail = getattr(e, "stderr", None) or str(e)
                m["footprint"] = {"error": f"footprint: {str(detail).strip()[:300]}", "image_used_bytes": None}
            save()
        # Last: the slowest by far, and it joins the cluster the baked boots installed.
        if "seed" in chosen:
            assert user_data is not None
            services()
            m["boot_seed_ready_s"] = _measure_seed(stack, inputs, workdir, user_data, seed_runs or runs, timeout_s,
                                                   log)
            save()
    doc = save()
    log(f"bench: wrote {results_path} ({doc['elapsed_s']:.0f}s)")
    if show_table:
        print_results(doc)
    return doc


def _tmp_parent(root: Path) -> Path:
    # Beside the artifacts: a converted raw image is GBs (sparse) and /tmp may be a small tmpfs elsewhere.
    parent = root / "build" / "bench"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _user_data(settings: Any) -> tuple[str, dict[str, str]]:
    """test-ami's user data for this run: every secret a random canary (``literal:`` references)."""
    from infra.localtwin import test_ami

    try:
        test_ami._check_service_settings(settings)  # the same refusal as test-ami: services must be on this host
    except test_ami.TestAmiError as e:
        raise BenchError(str(e)) from None
    canaries = test_ami.make_canaries(list(test_ami.secret_variables().values()))
    return test_ami.render_user_data_with_secrets(settings, canaries), canaries


def _start_services(
    stack: contextlib.ExitStack, settings: Any, canaries: dict[str, str], log: Log, port_wait_s: float
) -> None:
    """PostgreSQL and Redis on the host as test-ami starts them (the environment's ports, db and user).

    Waits up to ``port_wait_s`` for the ports while another run (test-ami) holds them.
    """
    from infra.localtwin.services import ServiceError, ThrowawayPostgres, ThrowawayRedis

    db, rd = settings.database, settings.redis
    deadline = time.monotonic() + port_wait_s
    announced = False
    while True:
        try:
            with contextlib.ExitStack() as attempt:
                attempt.enter_context(
                    ThrowawayPostgres(db.port, canaries["NEXTCLOUD_DB_PASSWORD"], dbname=db.name, user=db.user))
                attempt.enter_context(ThrowawayRedis(rd.port, canaries["NEXTCLOUD_REDIS_PASSWORD"]))
                stack.enter_context(attempt.pop_all())
            break
        except ServiceError as e:
            if "already in use" not in str(e) or time.monotonic() > deadline:
                raise BenchError(f"{e} (is a test-ami run using them? it must end first)") from None
            if not announced:
                log(f"bench: waiting for ports {db.port}/{rd.port} (another run holds them): {e}")
                announced = True
            time.sleep(10)
    log(f"bench: services PostgreSQL 127.0.0.1:{db.port}, Redis 127.0.0.1:{rd.port} (guest: {GUEST_HOST_IP})")


def _measure_seed(
    stack: contextlib.ExitStack, inputs: Inputs, workdir: Path, user_data: str, runs: int, timeout_s: float, log: Log
) -> dict[str, Any]:
    from infra.localtwin import standin
    from infra.localtwin.registry import GUEST_REGISTRY, LoopbackRegistry, RegistryError

    nc = inputs.settings.nextcloud
    image = standin.cached_standin_image(nc.image, nc.version)
    if image is None:
        return {"samples": [], "stats": summarize([]), "error": "the stand-in image is not cached: run "
                "`python -m infra.localtwin.standin` (or inv build-ami) first", "measured_at": _now_iso()}
    try:
        registry = stack.enter_context(LoopbackRegistry())
        registry.push(image)
    except RegistryError as e:
        return {"samples": [], "stats": summarize([]), "error": str(e), "measured_at": _now_iso()}
    serve = workdir / "serve"
    serve.mkdir()
    (serve / "image.tar.gz").write_bytes(image_sources_tarball(inputs.root / "image"))
    for rendered in ("nextcloud.env", "secret-references.json"):
        shutil.copyfile(inputs.root / "build" / inputs.settings.name / rendered, serve / rendered)
    port = stack.enter_context(loopback_http_server(serve))
    size_gb = _root_volume_gb(inputs)
    disk = _seed_qcow2(inputs.base.disk, size_gb, workdir)
    seed_ud = seed_user_data(user_data, f"http://{GUEST_HOST_IP}:{port}", _nextcloud_image(inputs), inputs.fingerprint,
                             str(_packer_vars(inputs)["docker_packages"]), GUEST_REGISTRY)
    target = BootTarget(disk, inputs.base.kernel, inputs.base.initrd)

    def after(inst: BenchInstance) -> dict[str, Any]:
        return {**_seed_step_timings(inst), **_installed_here(inst)}

    log(f"bench: seed-style sources served on 127.0.0.1:{port} (guest: http://{GUEST_HOST_IP}:{port}/)")
    (entry,) = _measure_alternating([("seed", lambda n: (target, seed_ud, after), "ready")], runs, timeout_s, log)
    entry["root_volume_gb"] = size_gb
    return entry


def _packer_vars(inputs: Inputs) -> dict[str, Any]:
    return json.loads((inputs.root / "build" / inputs.settings.name / "packer-vars.json").read_text())


def _root_volume_gb(inputs: Inputs) -> int:
    return int(_packer_vars(inputs)["root_volume_size_gb"])


def _nextcloud_image(inputs: Inputs) -> str:
    return str(_packer_vars(inputs)["nextcloud_image"])


# ---- front ends ------------------------------------------------------------------------------------------------
def print_results(doc: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # a log file or a pipe: wide enough that step names do not wrap
        console = Console(highlight=False, width=160)
    console.print(render_table(doc))


def main(argv: Sequence[str] | None = None) -> int:
    """python -m infra.bench [--env local] [--runs 3] [--only bare,baked,...] [--timeout S] [--full-bake]."""
    from render.settings import SettingsError, load_settings

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="local")
    p.add_argument("--runs", type=int, default=3, help="boots per boot measurement, and no-op rebuilds (default 3)")
    p.add_argument("--seed-runs", type=int, default=None, help="seed-style boots (default: --runs)")
    p.add_argument("--only", action="append", default=None,
                   help=f"measurements to run, comma-separated: {','.join(MEASUREMENTS)} (default: all)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per boot before giving up")
    p.add_argument("--quiet-wait", type=float, default=DEFAULT_QUIET_WAIT_S,
                   help="seconds a boot waits for other QEMU processes to end before starting anyway (recorded)")
    p.add_argument("--port-wait", type=float, default=DEFAULT_PORT_WAIT_S,
                   help="seconds to wait for the services' ports while another run holds them")
    p.add_argument("--full-bake", action="store_true", help="time a fresh forced bake (replaces the artifact)")
    p.add_argument("--show", action="store_true", help="only print the table of the last results.json")
    p.add_argument("--markdown", action="store_true", help="with --show: a Markdown summary (for the README)")
    a = p.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    if a.show:
        path = root / RESULTS
        if not path.is_file():
            print(f"{path} not found: run the benchmark first", file=sys.stderr)
            return 2
        doc = json.loads(path.read_text())
        if a.markdown:
            print(markdown_summary(doc), end="")
        else:
            print_results(doc)
        return 0
    try:
        settings = load_settings(root, a.env).settings
        doc = run_bench(root, settings, runs=a.runs, only=a.only, timeout_s=a.timeout, seed_runs=a.seed_runs,
                        full_bake=a.full_bake, quiet_wait_s=a.quiet_wait, port_wait_s=a.port_wait)
    except (SettingsError, BenchError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; VMs and services were torn down", file=sys.stderr)
        return 130
    return 0 if doc else 1


if __name__ == "__main__":
    raise SystemExit(main())
