"""test-ami for the local twin: boot throwaway instances of the baked qcow2 with canary secrets, run tests/image.

One run: random canary values for every secret -> throwaway PostgreSQL (password = the DB canary) and Redis on
the host's loopback (the guests see them at 10.0.2.2) -> user data rendered with the canaries as ``literal:``
references -> N instances booted from the artifact (overlays; the artifact is never written) -> wait until
each answers /readyz 200 -> cluster checks in the database (one install, one identity) -> the testinfra suite
against all instances, with the canaries and the artifact path -> the outage drills (infra/localtwin/drills.py:
PostgreSQL, then Redis stopped; readiness down, liveness up, outside callers told only a code word) -> everything
torn down, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra import build_record
from infra.errors import PipelineError
from infra.localtwin.drills import DrillError, run_drills
from infra.localtwin.instance import Instance, InstanceError, sigterm_raises
from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis

__test__ = False  # a pipeline step named "test", not a pytest module

GUEST_HOST = "10.0.2.2"  # the host's loopback as seen from a QEMU user-mode guest
CANARY_PREFIX = "canary"
# The cluster init's state table and its log line for a completed install (image/nextcloud/cluster/cluster-init.php).
STATE_TABLE = "nextcloud_cluster_state"
INSTALL_LOG_LINE = "installed Nextcloud "

# Delivered with the secrets but not secret: Nextcloud sends the instanceid to every browser as its session
# cookie name, and the cluster init logs it to identify the cluster. It gets a random value like the others
# (the cluster identity check uses it) but is not searched for as a leak.
NOT_SECRET = frozenset({"NEXTCLOUD_INSTANCEID"})

Log = Callable[[str], None]


class TestAmiError(PipelineError, RuntimeError):
    """The local test-ami run failed; the message says where."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_canaries(names: Sequence[str]) -> dict[str, str]:
    """A random, recognisable value per secret name: lowercase letters and digits only (valid anywhere)."""
    values = {}
    for name in names:
        short = name.removeprefix("NEXTCLOUD_").replace("_", "").lower()
        values[name] = f"{CANARY_PREFIX}{short}{secrets.token_hex(12)}"
    return values


# ---- the one place that knows how user data is rendered with secret values --------------------------------
def secret_variables() -> dict[str, str]:
    """Settings field -> environment variable name of every secret the user data carries."""
    from render.outputs import SECRET_VARIABLES

    return dict(SECRET_VARIABLES)


def render_user_data_with_secrets(settings: Any, values: dict[str, str]) -> str:
    """The environment's user data, with every secret replaced by a ``literal:`` reference to ``values``.

    ``values`` is keyed by variable name (NEXTCLOUD_DB_PASSWORD, ...). Uses render/'s own renderer, so the
    instances get exactly what the launch template would carry, only with this run's values.
    """
    from render.outputs import render_user_data

    fields = {field: f"literal:{values[var]}" for field, var in secret_variables().items()}
    patched = settings.model_copy(update={"secrets": settings.secrets.model_copy(update=fields)})
    return render_user_data(patched)


# ---- artifact ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalArtifact:
    disk: Path
    kernel: Path
    initrd: Path
    artifact_id: str


def read_record(path: Path) -> dict[str, Any]:
    """build/<env>/manifest.json as the local bake wrote it (infra/build_record.py); TestAmiError when there is none
    or it cannot be read."""
    try:
        record = build_record.read(path)
    except build_record.RecordError as e:
        raise TestAmiError(f"{path} is {e.reason}; re-run the bake") from None
    if record is None:
        raise TestAmiError(f"{path} not found: bake the image first (inv build-ami --env local)")
    return record


def read_manifest(path: Path, root: Path) -> LocalArtifact:
    """The baked qcow2 and its kernel/initrd from build/<env>/manifest.json (written by the local bake)."""
    return local_artifact(read_record(path), path, root)


def local_artifact(m: dict[str, Any], path: Path, root: Path) -> LocalArtifact:
    """The baked qcow2 and its kernel/initrd the record ``m`` (read from ``path``) names."""

    def resolve(value: Any, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise TestAmiError(f"{path}: no {what} recorded; re-run the bake")
        p = Path(value)
        for candidate in [p] if p.is_absolute() else [root / p, path.parent / p]:
            if candidate.exists():
                return candidate
        raise TestAmiError(f"{path}: {what} {value} does not exist; re-run the bake")

    disk_ref = m.get("disk") or m.get("artifact_path") or m.get("artifact_id")
    disk = resolve(disk_ref, "artifact disk")
    if disk.is_dir():
        images = sorted(disk.glob("*.qcow2"))
        if len(images) != 1:
            raise TestAmiError(f"{disk}: expected exactly one .qcow2, found {[i.name for i in images]}")
        disk = images[0]
    return LocalArtifact(
        disk=disk,
        kernel=resolve(m.get("kernel"), "kernel"),
        initrd=resolve(m.get("initrd"), "initrd"),
        artifact_id=str(m.get("artifact_id", disk)),
    )


def expected_build(record: dict[str, Any], manifest_path: Path) -> dict[str, Any]:
    """What the bake was asked for, from the artifact's record of the settings that drove it (packer-vars.json as
    rendered for that bake) -- the image suite's expected values, never the instance's own version-info."""
    try:
        inputs = record["inputs"]
    except KeyError as e:
        raise TestAmiError(
            f"{manifest_path} records no bake inputs ({e}): re-bake with this version (inv build-ami --force)"
        ) from None
    pins = dict(
        spec.split("=", 1) if "=" in spec else (spec, "") for spec in str(inputs.get("docker_packages", "")).split()
    )
    return {
        "fingerprint": record.get("fingerprint"),
        "docker_version": inputs.get("docker_version"),
        "docker_packages": pins,
        "nextcloud_image": inputs.get("nextcloud_image"),
        "nextcloud_version": inputs.get("nextcloud_version"),
        "base_image": inputs.get("source_image_id"),
    }


# ---- cluster checks in the shared database ---------------------------------------------------------------
def cluster_state(pg: ThrowawayPostgres) -> list[dict[str, str]]:
    out = pg.psql(
        f"SELECT json_agg(row_to_json(s)) FROM (SELECT id, instanceid, identity_digest, version, "
        f"installed_at, updated_at, updated_by FROM {STATE_TABLE}) s;"
    ).strip()
    return json.loads(out) if out else []


def check_cluster(pg: ThrowawayPostgres, instances: Sequence[Instance], canaries: dict[str, str], log: Log) -> None:
    """Exactly one install happened, for this run's cluster identity, and every instance joined it."""
    rows = cluster_state(pg)
    if len(rows) != 1:
        raise TestAmiError(f"{STATE_TABLE} holds {len(rows)} rows, expected exactly one cluster: {rows}")
    row = rows[0]
    if row["instanceid"] != canaries["NEXTCLOUD_INSTANCEID"]:
        raise TestAmiError(f"the database belongs to cluster {row['instanceid']!r}, not this run's instanceid")
    if row["installed_at"] != row["updated_at"]:
        raise TestAmiError(f"cluster state was rewritten after the install: {row}")
    installs = {}
    for inst in instances:
        r = inst.ssh(f"sudo journalctl --no-pager -o cat -u nextcloud.service | grep -c '{INSTALL_LOG_LINE}' || true")
        installs[inst.name] = int(r.stdout.strip() or 0)
    if sum(installs.values()) != 1:
        raise TestAmiError(f"expected exactly one install across the cluster, the journals show {installs}")
    installer = next(name for name, n in installs.items() if n)
    if row["updated_by"] != installer:
        log(f"note: state row updated_by {row['updated_by']!r}, install logged on {installer}")
    # /readyz is 200 only when the node's instanceid/passwordsalt/secret digest equals the row's: all nodes
    # being ready means all share this one identity.
    log(
        f"cluster: one install (on {installer}), identity {row['instanceid'][:14]}..., "
        f"{len(instances)} node(s) ready with it"
    )


# ---- the run --------------------------------------------------------------------------------------------------
@dataclass
class RunReport:
    ok: bool = False
    timings: dict[str, Any] = field(default_factory=dict)
    suite_exit: int | None = None
    error: str | None = None


def _run_suite(
    root: Path,
    instances: Sequence[Instance],
    ssh_config: Path,
    artifact: Path,
    canaries: dict[str, str],
    keep_going: bool,
    pytest_args: Sequence[str],
    expected: dict[str, Any],
) -> int:
    hosts = ",".join(f"paramiko://{i.name}" for i in instances)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "tests/image",
        f"--hosts={hosts}",
        f"--ssh-config={ssh_config}",
        "--sudo",
        f"--image-artifact={artifact}",
        "-p",
        "no:cacheprovider",
        "-o",
        "console_output_style=classic",
        *([] if keep_going else ["--maxfail=1"]),
        *pytest_args,
    ]
    env = {
        **os.environ,
        # Environment, not argv: argv of a process is visible to every local user.
        "NEXTCLOUD_TEST_CANARIES": json.dumps({k: v for k, v in canaries.items() if k not in NOT_SECRET}),
        "NEXTCLOUD_TEST_INSTANCE_IDS": json.dumps({i.name: i.instance_id for i in instances}),
        "NEXTCLOUD_TEST_EXPECTED": json.dumps(expected),
    }
    return subprocess.run(cmd, cwd=root, env=env).returncode


def run(
    root: Path,
    settings: Any,
    *,
    instances: int = 1,
    concurrent: bool = True,
    keep_going: bool = False,
    pytest_args: Sequence[str] = (),
    timeout_s: float = 1500.0,
    drills: bool = True,
    log: Log = _log,
) -> RunReport:
    """One test-ami run; always tears everything down. See the module docstring for the steps."""
    report = RunReport()
    if instances < 1:
        raise TestAmiError("instances must be at least 1")
    _check_service_settings(settings)
    manifest_path = build_record.manifest_path(root, settings.name)
    record = read_record(manifest_path)
    artifact = local_artifact(record, manifest_path, root)
    expected = expected_build(record, manifest_path)
    canaries = make_canaries(list(secret_variables().values()))
    user_data = render_user_data_with_secrets(settings, canaries)
    started = time.monotonic()
    artifact_stamp = _stamp(artifact.disk)
    log(
        f"test-ami: artifact {artifact.disk}, {instances} instance(s), "
        f"{'concurrent' if concurrent else 'one after another'}"
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(sigterm_raises())
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="test-ami-")))
        db, rd = settings.database, settings.redis
        pg = stack.enter_context(
            ThrowawayPostgres(db.port, canaries["NEXTCLOUD_DB_PASSWORD"], dbname=db.name, user=db.user)
        )
        redis = stack.enter_context(ThrowawayRedis(rd.port, canaries["NEXTCLOUD_REDIS_PASSWORD"]))
        log(f"services: PostgreSQL 127.0.0.1:{db.port}, Redis 127.0.0.1:{rd.port} (guest: {GUEST_HOST})")
        nodes = [
            Instance(
                artifact.disk,
                artifact.kernel,
                artifact.initrd,
                user_data,
                name=f"nc-test-{n}",
                timeout_s=timeout_s,
                progress=log,
            )
            for n in range(1, instances + 1)
        ]
        try:
            if concurrent or len(nodes) == 1:
                for node in nodes:
                    stack.callback(node.stop)
                    node.start()
                for node in nodes:
                    node.wait()
                check_cluster(pg, nodes, canaries, log)
                _suite_and_record(root, nodes, workdir, artifact, canaries, keep_going, pytest_args, report, log,
                                  expected)
                if report.suite_exit == 0 and drills:
                    t = time.monotonic()
                    run_drills(pg, redis, nodes, canaries, log)
                    report.timings["drills_s"] = round(time.monotonic() - t, 1)
            else:
                # One VM at a time: each later node joins the cluster the first one installed.
                for node in nodes:
                    stack.callback(node.stop)
                    node.start()
                    node.wait()
                    _suite_and_record(root, [node], workdir, artifact, canaries, keep_going, pytest_args, report,
                                      log, expected)
                    if report.suite_exit and not keep_going:
                        return report
                    node.stop()
                _check_sequential_cluster(pg, canaries, log)
            report.ok = report.suite_exit == 0
        except (InstanceError, TestAmiError, DrillError) as e:
            report.error = str(e)
            log(f"test-ami FAILED: {e}")
        finally:
            for node in nodes:
                report.timings[node.name] = node.timings.as_dict()
            t = time.monotonic()
            stack.close()
            report.timings["teardown_s"] = round(time.monotonic() - t, 1)
            report.timings["total_s"] = round(time.monotonic() - started, 1)
            for node in nodes:
                report.timings[node.name]["teardown"] = node.timings.teardown
            if _stamp(artifact.disk) != artifact_stamp:
                report.ok = False
                report.error = f"the artifact {artifact.disk} changed during the run; instances must use overlays"
                log(f"test-ami FAILED: {report.error}")
            log("test-ami timings: " + json.dumps(report.timings))
    return report


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _check_service_settings(settings: Any) -> None:
    # The image has the service addresses baked in (nextcloud.env): they must point at this host's services.
    problems = []
    if settings.database.host != GUEST_HOST:
        problems.append(f"database.host is {settings.database.host!r}, must be {GUEST_HOST!r}")
    if settings.redis.host != GUEST_HOST:
        problems.append(f"redis.host is {settings.redis.host!r}, must be {GUEST_HOST!r}")
    if settings.redis.tls:
        problems.append("redis.tls must be false (the throwaway Redis has no TLS)")
    if problems:
        raise TestAmiError(
            f"environment {settings.name}: {'; '.join(problems)} - the local twin's services run on the host"
        )


def _suite_and_record(root, nodes, workdir, artifact, canaries, keep_going, pytest_args, report, log,
                      expected) -> None:
    ssh_config = workdir / "ssh_config"
    ssh_config.write_text("\n".join(n.ssh_config_entry() for n in nodes))
    log(f"testinfra: tests/image against {', '.join(n.name for n in nodes)}")
    t = time.monotonic()
    exit_code = _run_suite(root, nodes, ssh_config, artifact.disk, canaries, keep_going, pytest_args, expected)
    report.suite_exit = max(report.suite_exit or 0, exit_code)  # one failing node fails the run
    report.timings.setdefault("testinfra_s", []).append(round(time.monotonic() - t, 1))
    if exit_code:
        report.error = f"tests/image failed on {', '.join(n.name for n in nodes)} (pytest exit {exit_code})"
        log(f"test-ami FAILED: {report.error}")


def _check_sequential_cluster(pg: ThrowawayPostgres, canaries: dict[str, str], log: Log) -> None:
    # The journals went with the stopped VMs; the state row is the record: one row, never rewritten.
    rows = cluster_state(pg)
    if len(rows) != 1 or rows[0]["instanceid"] != canaries["NEXTCLOUD_INSTANCEID"]:
        raise TestAmiError(f"expected one cluster row for this run's identity, found {rows}")
    if rows[0]["installed_at"] != rows[0]["updated_at"]:
        raise TestAmiError(f"cluster state rewritten after the install (a second install or upgrade): {rows}")
    log(f"cluster: one install (by {rows[0]['updated_by']}), later nodes joined without reinstalling")


def test_local_image(
    root: Path,
    settings: Any,
    instances: int = 1,
    keep_going: bool = False,
    **kwargs: Any,
) -> bool:
    """Run test-ami against the local twin; True when every instance became ready and the suite passed."""
    return run(root, settings, instances=instances, keep_going=keep_going, **kwargs).ok


def main(argv: list[str] | None = None) -> int:
    """python -m infra.localtwin.test_ami [--env local] [--instances N] [--one-at-a-time] [-- pytest args]."""
    import argparse

    from render.settings import SettingsError, load_settings

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--env", default="local")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="boot the instances one after another (one VM at a time); default: all at once",
    )
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("pytest_args", nargs="*")
    a = p.parse_args(argv)
    root = Path(__file__).resolve().parents[2]
    try:
        settings = load_settings(root, a.env).settings
    except SettingsError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        report = run(
            root,
            settings,
            instances=a.instances,
            concurrent=not a.one_at_a_time,
            keep_going=a.keep_going,
            pytest_args=a.pytest_args,
        )
    except TestAmiError as e:
        print(f"test-ami: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; everything was torn down", file=sys.stderr)
        return 130
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
