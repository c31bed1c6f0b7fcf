"""One benchmark run end to end: pick the measurements, start the services, boot, measure, write the record."""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from infra.bench import BenchError, Log, log_to_stderr, now_iso
from infra.bench.boots import (
    DEFAULT_QUIET_WAIT_S,
    DEFAULT_TIMEOUT_S,
    BenchInstance,
    BootMaker,
    boot_chain,
    docker_image_sizes,
    docker_volumes,
    host_key_types,
    installed_here,
    measure_alternating,
)
from infra.bench.floor import FLOOR_FILES, floor_disk
from infra.bench.footprint import measure_footprint
from infra.bench.inputs import Inputs, load_inputs
from infra.bench.rebuild import fresh_full_bake, full_bake_from_record, measure_bake_steps, measure_noop
from infra.bench.record import RESULTS, SCHEMA, machine_facts, merge_results, read_results
from infra.bench.seed import GUEST_HOST_IP, measure_seed
from infra.bench.table import markdown_summary, print_results
from infra.localtwin.instance import sigterm_raises

# Measurement names a developer can pick with --only, in the order a full run takes them. The baked boots run
# before the seed-style ones so that the first baked boot, not a seed one, performs the cluster's one install;
# the seed-style boots run late because they take longest; serving last, on a fleet of its own (the drill's).
MEASUREMENTS = ("bare", "baked", "noop", "bake", "footprint", "seed", "serving")
RESULT_KEYS = {
    "bare": "boot_bare_s",
    "baked": "boot_baked_ready_s",
    "seed": "boot_seed_ready_s",
    "noop": "noop_rebuild_s",
    "bake": "bake_steps",
    "footprint": "footprint",
    "serving": "serving",
}
# How long to wait for the services' ports while another run (test-ami) holds them.
DEFAULT_PORT_WAIT_S = 1800.0
NOTES = [
    "Boots run one at a time under QEMU (machine.accelerator says which) and are timed from QEMU's start.",
    "Readiness is polled every second from QEMU's start; SSH is not waited for first.",
    "Bare and baked boots take turns; the boot verdict (paired) is the median of each joining baked boot's time over "
    "the bare boot of its turn, with a bootstrap 95 % interval: met, missed or undecided against 1.15x.",
    "Seed-style fetches the stand-in base archive and image/ from a loopback HTTP server and builds the derived "
    "image at boot; it stands in for `docker pull` from a registry (slower on the wire, faster than a build).",
    "All baked and seed-style boots share one PostgreSQL/Redis: the first ready boot installs the cluster, the "
    "others join it, as scale-out instances do (see installed_cluster_on_this_boot per sample).",
]


def select_measurements(only: Iterable[str] | str | None) -> list[str]:
    """Validate ``only`` (names or result keys, comma lists allowed) and return them in run order."""
    if not only:
        return list(MEASUREMENTS)
    if isinstance(only, str):  # `--only bare,baked` hands over one string
        only = [only]
    by_key = {v: k for k, v in RESULT_KEYS.items()}
    chosen = set()
    for item in only:
        for name in filter(None, (s.strip() for s in str(item).split(","))):
            name = by_key.get(name, name)
            if name not in MEASUREMENTS:
                raise BenchError(f"--only {name!r}: unknown measurement; choose from {', '.join(MEASUREMENTS)}",
                                 exit_code=2)
            chosen.add(name)
    return [m for m in MEASUREMENTS if m in chosen]


def show(root: Path, markdown: bool = False) -> dict[str, Any]:
    """Print the last results (the table, or the Markdown summary) without measuring; returns the document."""
    doc = read_results(root / RESULTS)
    if markdown:
        print(markdown_summary(doc), end="")
    else:
        print_results(doc)
    return doc


def run_bench(
    root: Path,
    settings: Any,
    runs: int = 3,
    only: Iterable[str] | str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    seed_runs: int | None = None,
    full_bake: bool = False,
    log: Log = log_to_stderr,
    results_path: Path | None = None,
    show_table: bool = True,
    quiet_wait_s: float = DEFAULT_QUIET_WAIT_S,
    port_wait_s: float = DEFAULT_PORT_WAIT_S,
) -> dict[str, Any]:
    """Measure, write ``build/bench/results.json`` (merged with earlier results for the same artifact when only a
    subset runs) and return the result document. ``runs`` boots per boot measurement (``seed_runs`` overrides it
    for the slow seed-style boots), ``only`` picks measurements (see MEASUREMENTS), ``timeout_s`` bounds each
    boot, ``full_bake`` bakes afresh (forced) for ``full_bake_s`` instead of reading the artifact's record.
    Prints the table at the end unless ``show_table`` is False. ``quiet_wait_s``: how long each boot waits for
    other QEMU processes to end first; ``port_wait_s``: how long to wait for the services' ports.
    """
    if runs < 1:
        raise BenchError("--runs must be at least 1", exit_code=2)
    chosen = select_measurements(only)
    inputs = load_inputs(root, settings)
    results_path = results_path or root / RESULTS
    log(f"bench: artifact {inputs.artifact.disk} (fingerprint {inputs.fingerprint[:12]}); measuring "
        f"{', '.join(chosen)}; {runs} run(s) each" + (f", seed {seed_runs}" if seed_runs else ""))
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "env": settings.name,
        "generated_at": now_iso(),
        "machine": machine_facts(inputs.artifact.kernel),
        "artifact": {k: inputs.artifact_record.get(k) for k in ("artifact_id", "fingerprint", "sha256", "built_at")},
        "options": {"runs": runs, "seed_runs": seed_runs or runs, "only": chosen, "timeout_s": timeout_s,
                    "full_bake": full_bake, "quiet_wait_s": quiet_wait_s, "port_wait_s": port_wait_s},
        "measurements": {},
        "notes": NOTES,
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
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_raises())  # `kill` tears VMs, services and temp files down too
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-", dir=_tmp_parent(root))))
        services = _Services(stack, settings, log, port_wait_s) if {"bare", "baked", "seed"} & set(chosen) else None
        if {"bare", "baked"} & set(chosen):
            assert services is not None
            _measure_boots(root, inputs, chosen, services, m, image_info, runs, timeout_s, quiet_wait_s, log)
            save()
        if "noop" in chosen:
            m["noop_rebuild_s"] = measure_noop(inputs, runs, log)
        if "bake" in chosen or "noop" in chosen:
            if full_bake:
                m["full_bake_s"] = fresh_full_bake(inputs, log, quiet_wait_s)
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
            m["footprint"] = _footprint(inputs, workdir, image_info, previous)
            save()
        # Last: the slowest by far, and it joins the cluster the baked boots installed.
        if "seed" in chosen:
            assert services is not None
            services.start()
            m["boot_seed_ready_s"] = measure_seed(stack, inputs, workdir, services.user_data, seed_runs or runs,
                                                  timeout_s, log, quiet_wait_s)
            save()
    # After the services above are gone: the drill's fleet starts its own PostgreSQL and Redis on the same ports.
    if "serving" in chosen:
        m["serving"] = measure_serving(root, settings, log)
    doc = save()
    log(f"bench: wrote {results_path} ({doc['elapsed_s']:.0f}s)")
    if show_table:
        print_results(doc)
    return doc


def _measure_boots(root: Path, inputs: Inputs, chosen: list[str], services: _Services, m: dict[str, Any],
                   image_info: dict[str, Any], runs: int, timeout_s: float, quiet_wait_s: float, log: Log) -> None:
    """Bare and baked boots, taking turns (``measure_alternating``): the paired verdict is taken within one run."""
    user_data = services.user_data
    series: list[tuple[str, str, BootMaker, str]] = []
    if "bare" in chosen:
        floor = floor_disk(root, inputs.base, log)

        def after_bare(inst: BenchInstance) -> dict[str, Any]:
            chain = boot_chain(inst, log)  # first: it waits out an sshd restart (bootchain.read)
            return {**host_key_types(inst), **chain}

        series.append(("bare", "boot_bare_s", lambda n: (floor, user_data, after_bare), "ssh"))
    if "baked" in chosen:
        services.start()  # only the readiness boots need them: bare boots can run while another run holds the ports

        def after_baked(inst: BenchInstance) -> dict[str, Any]:
            chain = boot_chain(inst, log)  # first: it waits out an sshd restart (bootchain.read)
            if not image_info:
                image_info.update(docker_image_sizes(inst, inputs.nextcloud_image()))
            return {**installed_here(inst), **host_key_types(inst), **docker_volumes(inst), **chain}

        series.append(("baked", "boot_baked_ready_s", lambda n: (inputs.artifact, user_data, after_baked), "ready"))
    entries = measure_alternating([(kind, make, until) for kind, _, make, until in series], runs, timeout_s, log,
                                  quiet_wait_s=quiet_wait_s)
    for (_, key, _, _), entry in zip(series, entries, strict=True):
        m[key] = entry
    if "boot_bare_s" in m:
        m["boot_bare_s"]["floor_files"] = list(FLOOR_FILES)


def measure_serving(root: Path, settings: Any, log: Log) -> dict[str, Any]:
    """The serving figures next to the boot figures: one instance of the artifact behind the drill's balancer, loaded
    to saturation and beyond by the saturation drill (infra/drill/saturation.py): requests/s per instance at
    saturation, latency, errors by kind and the PostgreSQL connections that took. ``error`` when the drill's
    verdict failed (the figures are kept: they say what went wrong)."""
    from infra.drill.saturation import serving_figures
    from infra.errors import PipelineError

    started = time.monotonic()
    try:
        entry = serving_figures(root, settings, instances=1, log=log)
    except PipelineError as e:
        return {"error": f"serving: {e}", "measured_at": now_iso()}
    entry["seconds"] = round(time.monotonic() - started, 1)
    entry["measured_at"] = now_iso()
    if not entry["passed"]:
        entry["error"] = "the saturation verdict failed: " + "; ".join(entry["problems"])
    return entry


def _footprint(inputs: Inputs, workdir: Path, image_info: dict[str, Any], previous: dict[str, Any] | None) -> dict:
    note = "docker image inspect on the first baked boot" if image_info.get("nextcloud_image_bytes") else (
        "not measured: needs a baked boot in the same run (--only footprint --only baked)")
    if not image_info.get("nextcloud_image_bytes") and previous:
        # An earlier run's baked boot of this artifact measured it (merge_results keeps same-artifact only).
        old = (previous.get("measurements") or {}).get("footprint") or {}
        same = (previous.get("artifact") or {}).get("fingerprint") == inputs.fingerprint
        if same and old.get("nextcloud_image_bytes"):
            image_info["nextcloud_image_bytes"] = old["nextcloud_image_bytes"]
            note = f"from the baked boot of the run at {old.get('measured_at', '?')}"
    try:
        fp = measure_footprint(inputs, workdir, image_info.get("nextcloud_image_bytes"), note)
    except (subprocess.CalledProcessError, BenchError, OSError) as e:
        detail = getattr(e, "stderr", None) or str(e)
        return {"error": f"footprint: {str(detail).strip()[:300]}", "image_used_bytes": None}
    if image_info.get("nextcloud_base_image_bytes"):
        fp["nextcloud_base_image_bytes"] = image_info["nextcloud_base_image_bytes"]
    return fp


def _tmp_parent(root: Path) -> Path:
    # Beside the artifacts: a converted raw image is GBs (sparse) and /tmp may be a small tmpfs elsewhere.
    parent = root / "build" / "bench"
    parent.mkdir(parents=True, exist_ok=True)
    return parent


class _Services:
    """test-ami's user data for this run (every secret a random canary) and, once a readiness boot needs them,
    PostgreSQL and Redis on the host as test-ami starts them (torn down with ``stack``)."""

    def __init__(self, stack: contextlib.ExitStack, settings: Any, log: Log, port_wait_s: float):
        from infra.localtwin import test_ami

        try:
            test_ami._check_service_settings(settings)  # the same refusal as test-ami: services must be on this host
        except test_ami.TestAmiError as e:
            raise BenchError(str(e)) from None
        self.canaries = test_ami.make_canaries(list(test_ami.secret_variables().values()))
        self.user_data = test_ami.render_user_data_with_secrets(settings, self.canaries)
        self._stack, self._settings, self._log, self._port_wait_s = stack, settings, log, port_wait_s
        self._up = False

    def start(self) -> None:
        """Start the services once; waits up to ``port_wait_s`` for the ports while another run holds them."""
        from infra.localtwin.services import ServiceError, ThrowawayPostgres, ThrowawayRedis

        if self._up:
            return
        db, rd = self._settings.database, self._settings.redis
        deadline = time.monotonic() + self._port_wait_s
        announced = False
        while True:
            try:
                with contextlib.ExitStack() as attempt:
                    attempt.enter_context(ThrowawayPostgres(db.port, self.canaries["NEXTCLOUD_DB_PASSWORD"],
                                                            dbname=db.name, user=db.user))
                    attempt.enter_context(ThrowawayRedis(rd.port, self.canaries["NEXTCLOUD_REDIS_PASSWORD"]))
                    self._stack.enter_context(attempt.pop_all())
                break
            except ServiceError as e:
                if "already in use" not in str(e) or time.monotonic() > deadline:
                    raise BenchError(f"{e} (is a test-ami run using them? it must end first)") from None
                if not announced:
                    self._log(f"bench: waiting for ports {db.port}/{rd.port} (another run holds them): {e}")
                    announced = True
                time.sleep(10)
        self._up = True
        self._log(f"bench: services PostgreSQL 127.0.0.1:{db.port}, Redis 127.0.0.1:{rd.port} "
                  f"(guest: {GUEST_HOST_IP})")
