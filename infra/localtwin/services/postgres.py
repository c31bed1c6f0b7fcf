"""A throwaway PostgreSQL 15 cluster on loopback: the local stand-in for RDS.

The cluster lives in its own temporary directory and listens on the port you give it (127.0.0.1 by default). As
root, PostgreSQL runs as the ``postgres`` system user (``runuser``), because PostgreSQL refuses to run as root; as
any other user it runs as that user. The superuser is reachable only over a Unix socket inside the temp directory
(trust); TCP clients must use the application role's password (scram-sha-256), like on RDS. ``pg_ctl`` runs the
server, so there is no child process of ours to watch: readiness is ``pg_isready``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from infra.localtwin.processes import ManagedProcess
from infra.localtwin.services.base import ServiceError, check_port

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


class ThrowawayPostgres(ManagedProcess):
    """A private PostgreSQL 15 cluster with one database owned by one password-protected role.

    ``port``: TCP port on ``host`` (loopback by default). ``password``: the application role's password.
    ``dbname``/``user``: database and its owner role, created on first start. ``workdir``: where the
    cluster lives (default: a fresh temp dir, removed by ``close()``; a given dir is left in place).
    """

    error = ServiceError

    def __init__(
        self,
        port: int,
        password: str,
        *,
        dbname: str = "nextcloud",
        user: str = "nextcloud",
        host: str = "127.0.0.1",
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if not password:
            raise ServiceError("ThrowawayPostgres: password must not be empty (TCP clients authenticate)")
        if "\n" in password or "\x00" in password:
            raise ServiceError("ThrowawayPostgres: password must not contain a newline or NUL")
        self.port = port
        self.password = password
        self.dbname = dbname
        self.user = user
        self.host = host
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir else None
        self._initialised = False
        self._running = False

    # -- paths -------------------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="throwaway-pg-"))
        return self._workdir

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def socketdir(self) -> Path:
        return self.workdir / "sock"

    @property
    def logfile(self) -> Path:
        return self.workdir / "postgres.log"

    @property
    def dsn(self) -> str:
        """libpq key/value DSN for the application role over TCP (holds the password)."""
        return (
            f"host={self.host} port={self.port} dbname={self.dbname} "
            f"user={self.user} password={self.password}"
        )

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle ---------------------------------------------------------------------------------
    def _as_postgres(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60):
        # PostgreSQL refuses to run as root; as any other user it simply runs as that user.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *args],
            input=stdin,
            text=True,
            capture_output=True,
            check=check,
            timeout=timeout,
        )

    def _initdb(self) -> None:
        self.workdir.chmod(0o700)
        self.socketdir.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.workdir, pg.pw_uid, pg.pw_gid)
            os.chown(self.socketdir, pg.pw_uid, pg.pw_gid)
        if not (self.datadir / "PG_VERSION").exists():
            res = self._as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                check=False,
            )
            if res.returncode != 0:
                raise ServiceError(f"initdb failed in {self.datadir}:\n{res.stdout}{res.stderr}")
            # Settings for a disposable test cluster: fast, small, loopback only.
            with open(self.datadir / "postgresql.auto.conf", "a") as conf:
                conf.write(
                    f"listen_addresses = '{self.host}'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.socketdir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "max_connections = 100\nshared_buffers = 32MB\n"
                )
        self._initialised = True

    def start(self) -> None:
        """Start the server (initdb and db/role creation the first time); wait until it accepts clients."""
        if self._running:
            return
        check_port(self.host, self.port, "ThrowawayPostgres")
        first = not self._initialised
        if first:
            self._initdb()
        res = self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            str(int(self.start_timeout)),
            "start",
            check=False,
            timeout=self.start_timeout + 10,
        )
        if res.returncode != 0:
            raise ServiceError(
                f"pg_ctl start failed (port {self.port}):\n{res.stdout}{res.stderr}\n{self.log_tail()}"
            )
        self._running = True
        self._wait_ready()
        if first:
            self._create_db_and_role()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            res = self._as_postgres(
                str(PG_BIN / "pg_isready"), "-h", str(self.socketdir), "-p", str(self.port), "-q", check=False
            )
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"PostgreSQL on port {self.port} not ready after {self.start_timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _create_db_and_role(self) -> None:
        lit = self.password.replace("'", "''")
        ident_user = '"' + self.user.replace('"', '""') + '"'
        ident_db = '"' + self.dbname.replace('"', '""') + '"'
        # Password goes through stdin, never argv (visible in ps).
        self.psql(f"CREATE ROLE {ident_user} LOGIN PASSWORD '{lit}';", dbname="postgres")
        self.psql(f"CREATE DATABASE {ident_db} OWNER {ident_user};", dbname="postgres")

    def reset_database(self) -> None:
        """Drop and re-create the application database (empty, same owner): a fresh cluster DB for a test."""
        ident_user = '"' + self.user.replace('"', '""') + '"'
        ident_db = '"' + self.dbname.replace('"', '""') + '"'
        self.psql(f"DROP DATABASE IF EXISTS {ident_db} WITH (FORCE);", dbname="postgres")
        self.psql(f"CREATE DATABASE {ident_db} OWNER {ident_user};", dbname="postgres")

    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        """Run SQL as the superuser over the private Unix socket; return psql's tuples-only stdout."""
        if not self._running:
            raise ServiceError("ThrowawayPostgres.psql: the server is not running")
        res = self._as_postgres(
            str(PG_BIN / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socketdir),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            dbname or self.dbname,
            stdin=sql,
            check=False,
        )
        if res.returncode != 0:
            raise ServiceError(f"psql failed: {res.stderr.strip()}")
        return res.stdout

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are disconnected); data is kept for start()."""
        if not self._running:
            return
        self._as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop", check=False
        )
        self._running = False

    def close(self) -> None:
        """Stop the server and remove the temp dir (if we created it)."""
        with contextlib.suppress(Exception):
            if self._initialised:
                # Even if we think it is stopped, make sure no postmaster survives us.
                self._as_postgres(
                    str(PG_BIN / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                    check=False,
                )
        self._running = False
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._initialised = False

    @property
    def log_path(self) -> Path:
        return self.logfile
