"""Fixtures for the Nextcloud cluster init and readiness tests: real PostgreSQL and Redis (infra/localtwin/services),
and "nodes" that run the image's very PHP files on the host with php-cli / `php -S`.

A node is what one container would be: its own copy of the webroot (the stand-in code tree laid out the way
image/nextcloud/Dockerfile lays it out), its own state dir on tmpfs (/dev/shm), and the cluster environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from infra import build_record
from infra.lane.admin_socket import AdminPasswordSocket
from infra.localtwin.instance import free_port
from infra.localtwin.services import ThrowawayPostgres, ThrowawayRedis

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "image" / "nextcloud"
STANDIN_TREE = ROOT / "infra" / "localtwin" / "standin" / "nextcloud"
CLUSTER_LIB = OVERLAY / "cluster"
INIT = CLUSTER_LIB / "cluster-init.php"
READYZ = CLUSTER_LIB / "readyz" / "readyz.php"
ENTRYPOINT = OVERLAY / "bin" / "nextcloud-cluster-entrypoint"
ROUTER = ROOT / "tests" / "fixtures" / "nextcloud" / "router.php"

# Passwords with characters that break naive env-file, DSN or URL handling; they must survive verbatim.
DB_PASSWORD = "pg=p@ss w0rd'\"$HOME" + secrets.token_hex(4)
REDIS_PASSWORD = "r3dis=p@ss$HOME&x" + secrets.token_hex(4)
IDENTITY = {
    "NEXTCLOUD_INSTANCEID": "oc" + secrets.token_hex(5),
    "NEXTCLOUD_PASSWORDSALT": secrets.token_urlsafe(22),
    "NEXTCLOUD_SECRET": secrets.token_urlsafe(36),
}
ADMIN_PASSWORD = "admin-" + secrets.token_hex(8)


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    # Dynamic ports: never collide with the local twin (55432/56379) or another test run.
    with ThrowawayPostgres(free_port(), DB_PASSWORD) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[ThrowawayRedis]:
    with ThrowawayRedis(free_port(), REDIS_PASSWORD) as server:
        yield server


@pytest.fixture
def services(pg: ThrowawayPostgres, redis_server: ThrowawayRedis) -> Iterator[tuple[ThrowawayPostgres, ThrowawayRedis]]:
    """Running services and an empty cluster database; both are running again after the test."""
    if not pg.running:
        pg.start()
    if not redis_server.running:
        redis_server.start()
    pg.reset_database()
    yield pg, redis_server
    if not pg.running:
        pg.start()
    if not redis_server.running:
        redis_server.start()


def db_snapshot(pg: ThrowawayPostgres) -> dict[str, Any]:
    """Every table in the cluster database with its columns and all rows: to prove nothing was written."""
    with psycopg.connect(host=pg.host, port=pg.port, dbname=pg.dbname, user=pg.user, password=pg.password) as c:
        tables = [r[0] for r in c.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")]
        snap: dict[str, Any] = {}
        for t in tables:
            cols = [r[0] for r in c.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s ORDER BY ordinal_position",
                (t,))]
            rows = c.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall()
            snap[t] = {"columns": cols, "rows": [tuple(str(v) for v in r) for r in rows]}
        return snap


def query(pg: ThrowawayPostgres, sql: str) -> list[tuple]:
    with psycopg.connect(host=pg.host, port=pg.port, dbname=pg.dbname, user=pg.user, password=pg.password) as c:
        return c.execute(sql).fetchall()


def occ_calls(pg: ThrowawayPostgres, verb: str) -> list[tuple]:
    """The occ double's call log for one verb (empty when occ was never called)."""
    if not query(pg, "SELECT to_regclass('public.occ_double_calls') IS NOT NULL")[0][0]:
        return []
    return query(pg, f"SELECT host, pid, exit_code, note FROM occ_double_calls WHERE verb = '{verb}' ORDER BY id")


def end_group(proc: subprocess.Popen[str], timeout: float) -> None:
    """End a child started with its own session, and everything in it: SIGTERM, ``timeout`` s, then SIGKILL."""
    if proc.poll() is not None:
        # The leader is gone, not necessarily its group: an entrypoint that gives up (exit 75) leaves its `php -S`
        # behind, as a container's would without the runtime to kill its cgroup.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Node:
    """One would-be container: own webroot copy and tmpfs state dir, the cluster environment."""

    def __init__(self, base: Path, name: str, pg: ThrowawayPostgres, redis_server: ThrowawayRedis) -> None:
        self.name = name
        self.dir = base / name
        self.webroot = self.dir / "webroot"
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"nc-state-{name}-", dir="/dev/shm"))
        self._build_webroot()
        self.public_env = {
            "NEXTCLOUD_DB_HOST": pg.host, "NEXTCLOUD_DB_PORT": str(pg.port), "NEXTCLOUD_DB_NAME": pg.dbname,
            "NEXTCLOUD_DB_USER": pg.user, "NEXTCLOUD_REDIS_HOST": redis_server.host,
            "NEXTCLOUD_REDIS_PORT": str(redis_server.port), "NEXTCLOUD_REDIS_TLS": "0",
            "NEXTCLOUD_TRUSTED_DOMAINS": "localhost nc.example.test", "NEXTCLOUD_TRUSTED_PROXIES": "10.0.0.0/16",
            "NEXTCLOUD_OVERWRITE_PROTOCOL": "https", "NEXTCLOUD_OVERWRITE_HOST": "nc.example.test",
            "NEXTCLOUD_OVERWRITE_CLI_URL": "https://nc.example.test", "NEXTCLOUD_ADMIN_USER": "admin",
            "NEXTCLOUD_ENVIRONMENT": "test",
        }
        self.secret_env = {
            "NEXTCLOUD_DB_PASSWORD": DB_PASSWORD, "NEXTCLOUD_REDIS_PASSWORD": REDIS_PASSWORD,
            "NEXTCLOUD_ALLOW_INSTALL": "0", "NEXTCLOUD_ALLOW_UPGRADE": "0", **IDENTITY,
        }
        # The host's socket (nextcloud-admin-password.socket, answered by the image's resolver from literal
        # references, as in the local twin): the installing node only fetches the admin password over it, and every
        # node that may install seals it over the socket beside it once the cluster is installed.
        self.admin_socket = AdminPasswordSocket({**IDENTITY, "NEXTCLOUD_DB_PASSWORD": DB_PASSWORD,
                                                 "NEXTCLOUD_REDIS_PASSWORD": REDIS_PASSWORD,
                                                 "NEXTCLOUD_ADMIN_PASSWORD": ADMIN_PASSWORD}, environment="test")
        self.procs: list[subprocess.Popen[str]] = []
        self.http_port: int | None = None
        self.last_log = self.dir / "none.log"

    def _build_webroot(self) -> None:
        # Mirror of the Dockerfile's webroot stage.
        shutil.copytree(STANDIN_TREE, self.webroot)
        cfg = self.webroot / "config"
        for f in cfg.glob("*.php"):
            if f.name != "config.sample.php":
                f.unlink()
        shutil.copy(OVERLAY / "config" / "cluster.config.php", cfg)
        shutil.copy(OVERLAY / "config" / "config.php", cfg)
        (self.webroot / "data").mkdir()
        # As the image bakes it (Dockerfile): the marker Nextcloud 34 checks, with the content its installer writes.
        (self.webroot / "data" / ".ncdata").write_text("# Nextcloud data directory\n# Do not change this file")

    def env(self, **overrides: str | None) -> dict[str, str]:
        """Process environment with everything in it (as Apache has it after the entrypoint)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTCLOUD_", "NC_", "PHP_INI"))}
        env.update(self.public_env)
        env.update(self.secret_env)
        env.update(self.paths_env())
        for k, v in overrides.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def paths_env(self) -> dict[str, str]:
        return {
            "NEXTCLOUD_WEBROOT": str(self.webroot), "NEXTCLOUD_CLUSTER_STATE_DIR": str(self.state_dir),
            "NEXTCLOUD_CLUSTER_LIB_DIR": str(CLUSTER_LIB), "NEXTCLOUD_INIT_BACKOFF_INITIAL": "0.2",
            "NEXTCLOUD_ADMIN_PASSWORD_SOCKET": str(self.admin_socket.path),
            "NEXTCLOUD_ADMIN_SEAL_SOCKET": str(self.admin_socket.seal_path),
            "NEXTCLOUD_INIT_BACKOFF_MAX": "1", "NEXTCLOUD_INIT_WAIT_TIMEOUT": "120",
            # The occ double's stand-in for install/upgrade time: long enough that concurrent starters overlap.
            "NEXTCLOUD_OCC_DOUBLE_DELAY": "0.5",
            # Every probe sees the state as it is now (the image caches the verdict for 5 s).
            "NEXTCLOUD_READYZ_CACHE_SECONDS": "0",
            # Nextcloud's own verdict: the stand-in's status.php, served by this node's web server.
            "NEXTCLOUD_STATUS_URL": f"http://127.0.0.1:{self.http_port or 9}/status.php",
        }

    # -- running the image's scripts ---------------------------------------------------------------
    def _log(self, what: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / f"{what}-{len(self.procs)}.log"

    def start_init(self, **overrides: str | None) -> subprocess.Popen[str]:
        """cluster-init.php in the background (output in self.last_log)."""
        self.last_log = self._log("init")
        with self.last_log.open("w") as log:
            p = subprocess.Popen(["php", str(INIT)], env=self.env(**overrides), text=True,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def run_init(self, timeout: float = 60, **overrides: str | None) -> tuple[int, str]:
        p = self.start_init(**overrides)
        p.wait(timeout=timeout)
        return p.returncode, self.last_log.read_text()

    def start_container(self, **overrides: str | None) -> subprocess.Popen[str]:
        """The entrypoint as in the container: runtime secrets only in the env file, `php -S` as the web server."""
        runtime = self.dir / "runtime.env"
        lines = [f"{k}={v}" for k, v in self.secret_env.items()]
        runtime.write_text("# runtime secrets (test)\n\n" + "\n".join(lines) + "\n")
        runtime.chmod(0o600)
        self.http_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NEXTCLOUD_", "NC_", "PHP_INI"))}
        # Several workers, as Apache has: /readyz asks this same server for status.php while it answers.
        env["PHP_CLI_SERVER_WORKERS"] = "4"
        env.update(self.public_env)
        env.update(self.paths_env())
        env["NEXTCLOUD_RUNTIME_ENV_FILE"] = str(runtime)
        env.update({k: v for k, v in overrides.items() if v is not None})
        cmd = [str(ENTRYPOINT), "php", "-S", f"127.0.0.1:{self.http_port}", str(ROUTER)]
        self.last_log = self._log("container")
        with self.last_log.open("w") as log:
            p = subprocess.Popen(cmd, env=env, text=True, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append(p)
        self._wait_for_web_server()
        return p

    def readyz_http(self, path: str = "/readyz", headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        assert self.http_port, "start_container() first"
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def livez_http(self, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        return self.readyz_http("/livez", headers)

    def ensure_web_server(self) -> None:
        """A node that only ran its init has no web server; readiness asks the node's status.php, so serve it."""
        if self.http_port is not None:
            return
        self.http_port = free_port()
        log = self._log("web")
        with log.open("w") as out:
            p = subprocess.Popen(["php", "-S", f"127.0.0.1:{self.http_port}", str(ROUTER)],
                                 env={**self.env(), "PHP_CLI_SERVER_WORKERS": "2"}, text=True, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        self._wait_for_web_server()

    def _wait_for_web_server(self, timeout: float = 10) -> None:
        """Until this node's web server accepts connections (at most ``timeout`` s; the requests then say why not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)

    def readyz_cli(self, **overrides: str | None) -> dict[str, Any]:
        self.ensure_web_server()
        r = subprocess.run(["php", str(READYZ)], env=self.env(**overrides), text=True, capture_output=True, timeout=20)
        result = json.loads(r.stdout)
        assert (r.returncode == 0) == result["ready"], r
        return result

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.state_dir / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_state(self, code: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.state()
            if s and s.get("code") == code:
                return s
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: state never reached {code!r}; last: {self.state()}")

    def set_code_version(self, version: tuple[int, ...]) -> None:
        """Replace version.php as a newer/older image would have it."""
        vf = self.webroot / "version.php"
        text = vf.read_text()
        start = text.index("$OC_Version = array(")
        end = text.index(");", start)
        vf.write_text(text[:start] + f"$OC_Version = array({', '.join(map(str, version))}" + text[end:])
        vf.write_text(re.sub(r"\$OC_VersionString = '[^']*'",
                             f"$OC_VersionString = '{'.'.join(map(str, version[:3]))}'", vf.read_text()))

    def stop(self) -> None:
        for p in self.procs:
            # Own session each: this ends the entrypoint and its web server and init, not just the first.
            end_group(p, timeout=10)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.admin_socket.close()


@pytest.fixture
def make_node(tmp_path: Path, services: tuple[ThrowawayPostgres, ThrowawayRedis]) -> Iterator[Any]:
    """Factory: make_node("a") -> Node; every node's processes and tmpfs state are removed afterwards."""
    nodes: list[Node] = []

    def factory(name: str) -> Node:
        node = Node(tmp_path, name, *services)
        nodes.append(node)
        return node

    yield factory
    for n in nodes:
        n.stop()


# ---- the baked local artifact, shared by every test that boots it -------------------------------------------
# The bake (a TCG VM, 15-25 minutes) starts as soon as collection shows that a selected test will need it, and runs
# beside the tests that do not: most of those wait on subprocesses, moto and PostgreSQL rather than on both cores,
# and the bake itself waits on downloads. The first test that needs the artifact waits for it.
_BAKE_TIMEOUT_S = 3600
_bake: dict[str, Any] = {}


def _start_bake() -> None:
    log = tempfile.NamedTemporaryFile(prefix="local-artifact-bake-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "build-ami", "--env", "local"], cwd=ROOT, text=True,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    _bake.update(proc=proc, log=Path(log.name), started=time.monotonic())


def _will_run(item: pytest.Item) -> bool:
    return not any(m.args and m.args[0] is True for m in item.iter_markers("skipif")) and not any(
        True for _ in item.iter_markers("skip"))


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or _bake:
        return
    if any("local_artifact" in getattr(item, "fixturenames", ()) and _will_run(item) for item in session.items):
        _start_bake()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A bake still running when the session ends (a failure with -x, Ctrl-C) is stopped with its VM."""
    if _bake:
        end_group(_bake["proc"], timeout=120)
    log = _bake.get("log")
    if log is not None:
        log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def local_artifact() -> dict[str, Any]:
    """Bake the local image (or reuse the one whose fingerprint matches) with the real front door; its manifest.

    Session-scoped so the chain test and the live image-suite checks share one bake whatever order they run in;
    started early by pytest_collection_finish above. The bake's output is written to the test log (visible with -s
    or in CI's output on failure).
    """
    if not _bake:
        _start_bake()
    proc: subprocess.Popen[str] = _bake["proc"]
    remaining = _BAKE_TIMEOUT_S - (time.monotonic() - _bake["started"])
    try:
        proc.wait(timeout=max(remaining, 1))
    except subprocess.TimeoutExpired:
        end_group(proc, timeout=120)
    output = _bake["log"].read_text(errors="replace")
    sys.stdout.write(output)
    assert proc.returncode == 0, f"inv build-ami --env local exited {proc.returncode}:\n{output[-4000:]}"
    manifest = build_record.read(build_record.manifest_path(ROOT, "local"))
    manifest["build_output"] = output
    return manifest
