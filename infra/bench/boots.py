"""Boots: one VM boot timed from QEMU's start, the alternating series of boots, and what is read after a boot
(never part of its time)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.bench import BenchError, Log, bootchain, now_iso
from infra.bench.procwatch import qemu_pids, wait_for_quiet
from infra.bench.stats import summarize
from infra.localtwin.instance import Instance, InstanceError

POLL_S = 1.0
DEFAULT_TIMEOUT_S = 2400.0
# How long a boot waits for other QEMU processes (other people's bakes and boots) to end before it starts anyway
# and records them in the sample.
DEFAULT_QUIET_WAIT_S = 1800.0


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


After = Callable[[BenchInstance], dict[str, Any]]
# Turn number -> what that boot starts from, its user data, and what to read after it.
BootMaker = Callable[[int], tuple[BootTarget, str, After | None]]


def boot_once(
    kind: str,
    target: BootTarget,
    user_data: str,
    until: str,
    *,
    run: int,
    runs: int,
    timeout_s: float,
    log: Log,
    after: After | None = None,
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


def measure_alternating(
    series: Sequence[tuple[str, BootMaker, str]], runs: int, timeout_s: float, log: Log,
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S,
) -> list[dict[str, Any]]:
    """Boot each series ``runs`` times, taking turns (bare 1, baked 1, bare 2, baked 2, ...); one series alone
    is simply ``runs`` boots of it.

    Under TCG the whole guest runs slower for minutes at a time (the host's other tenants): with all bare boots
    first and all baked boots after, such a phase lands on one side of the ratio only. Taking turns spreads it
    over both, and lets the boot verdict pair each boot with its neighbour of the same turn (``stats``). One entry
    per series, in the order given; the entries of one call share a ``series`` id (pairs never cross runs).
    """
    series_id = f"{now_iso()}-{uuid.uuid4().hex[:8]}"
    details: list[list[dict[str, Any]]] = [[] for _ in series]
    errors: list[list[str]] = [[] for _ in series]
    for n in range(1, runs + 1):
        for i, (kind, make, until) in enumerate(series):
            started = time.monotonic()
            try:
                target, user_data, after = make(n)
                sample = boot_once(kind, target, user_data, until, run=n, runs=runs, timeout_s=timeout_s,
                                   log=log, after=after, quiet_wait_s=quiet_wait_s)
            except (InstanceError, BenchError, subprocess.CalledProcessError) as e:
                errors[i].append(f"run {n}: {str(e).splitlines()[0]}")
                log(f"bench: {kind} boot {n}/{runs} FAILED: {e}")
                continue
            sample["value_s"] = sample["ssh_login_s"] if until == "ssh" else sample["ready_s"]
            sample["wall_s"] = round(time.monotonic() - started, 1)
            sample["turn"] = n
            details[i].append(sample)
            log(f"bench: {kind} boot {n}/{runs}: {sample['value_s']:.1f}s")
    entries = []
    for i, (_, _, until) in enumerate(series):
        samples = [d["value_s"] for d in details[i]]
        entry = {"samples": samples, "stats": summarize(samples), "details": details[i], "measured_at": now_iso(),
                 "until": "SSH key login" if until == "ssh" else "GET /readyz 200", "series": series_id,
                 "alternated_with": [k for j, (k, _, _) in enumerate(series) if j != i]}
        if errors[i]:
            entry["error"] = "; ".join(errors[i])
        entries.append(entry)
    return entries


# ---- read after a boot -------------------------------------------------------------------------------------------
def docker_volumes(inst: BenchInstance) -> dict[str, Any]:
    """How many Docker volumes the instance has after its container started (each one a copy of a webroot)."""
    r = inst.ssh("sudo docker volume ls --quiet | wc -l; sudo du -sm /var/lib/docker/volumes | cut -f1", timeout=120)
    lines = r.stdout.split()
    return {"docker_volumes": int(lines[0]), "docker_volumes_mb": int(lines[1])} if len(lines) == 2 else {}


def boot_chain(inst: BenchInstance, log: Log) -> dict[str, Any]:
    """What the boot waited on (``bootchain``), read after it was measured, so not part of the time."""
    chain = bootchain.read(inst)
    log(f"bench: {inst.name} chain (s after the kernel started): {chain.get('error') or bootchain.summary(chain)}")
    return {"boot_chain": chain}


def host_key_types(inst: BenchInstance) -> dict[str, Any]:
    r = inst.ssh("ls /etc/ssh/ | sed -n 's/^ssh_host_\\(.*\\)_key\\.pub$/\\1/p'", timeout=60)
    return {"host_key_types": sorted(r.stdout.split())}


def docker_image_sizes(inst: BenchInstance, base_image: str) -> dict[str, Any]:
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


def installed_here(inst: BenchInstance) -> dict[str, Any]:
    """Whether this boot installed the cluster (the first into an empty database) or joined it: the paired
    verdict counts joining boots only."""
    r = inst.ssh("sudo journalctl --no-pager -o cat -u nextcloud.service | grep -c 'installed Nextcloud ' || true",
                 timeout=60)
    text = r.stdout.strip()
    return {"installed_cluster_on_this_boot": int(text) > 0} if text.isdigit() else {}
