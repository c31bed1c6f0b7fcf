"""Throwaway PostgreSQL 15 and Redis servers on loopback, for tests and for the local twin.

They stand in for RDS and ElastiCache. Each server lives in its own temporary directory, listens on the
port you give it (127.0.0.1 by default) and is stopped and removed when the context manager exits, even
after a failure. Tests that need "the database goes away, then comes back" call ``stop()`` / ``start()``.

    from infra.localservices import ThrowawayPostgres, ThrowawayRedis

    with ThrowawayPostgres(port=55432, password="s3cret") as pg, ThrowawayRedis(port=56379) as rd:
        pg.dsn            # "host=127.0.0.1 port=55432 dbname=nextcloud user=nextcloud password=s3cret"
        pg.psql("SELECT 1")  # runs SQL as the superuser over the private Unix socket, returns stdout
        pg.stop(); pg.start()
        rd.url            # "redis://127.0.0.1:56379/0"

As root, PostgreSQL runs as the ``postgres`` system user (``runuser``), because PostgreSQL refuses to run as
root; as any other user it runs as that user. The superuser is reachable only over a Unix socket inside the temp
directory (trust); TCP clients must use the application role's password (scram-sha-256), like on RDS.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")


class ServiceError(RuntimeError):
    """A throwaway service could not be started or did not become ready."""


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _check_port(host: str, port: int, what: str) -> None:
    if not _port_is_free(host, port):
        raise ServiceError(
            f"{what}: port {host}:{port} is already in use; stop whatever listens there or pick another port"
        )


class _Service:
    """Common context-manager plumbing: start on enter, stop and remove the temp dir on exit."""

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def restart(self) -> None:
        """Stop, then start again with the same data (e.g. "DB down then up")."""
        self.stop()
        self.start()


class ThrowawayPostgres(_Service):
    """A private PostgreSQL 15 cluster with one database owned by one password-protected role.

    ``port``: TCP port on ``host`` (loopback by default). ``password``: the application role's password.
    ``dbname``/``user``: database and its owner role, created on first start. ``workdir``: where the
    cluster lives (default: a fresh temp dir, removed by ``close()``; a given dir is left in place).
    """

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
        _check_port(self.host, self.port, "ThrowawayPostgres")
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
                f"pg_ctl start failed (port {self.port}):\n{res.stdout}{res.stderr}\n{self._log()}"
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
                    f"PostgreSQL on port {self.port} not ready after {self.start_timeout}s\n{self._log()}"
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

    def _log(self) -> str:
        try:
            return self.logfile.read_text()[-2000:]
        except OSError:
            return ""


class ThrowawayRedis(_Service):
    """A private Redis server (no persistence) on ``host:port``, optionally with ``requirepass``.

    ``tls=True``: the port speaks TLS only (like ElastiCache with in-transit encryption), with a throwaway CA
    and a server certificate for ``localhost`` / 127.0.0.1; clients trust ``ca_file``.
    """

    def __init__(
        self,
        port: int,
        password: str | None = None,
        *,
        host: str = "127.0.0.1",
        tls: bool = False,
        workdir: str | os.PathLike[str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        if password and ("\n" in password or " " in password):
            raise ServiceError("ThrowawayRedis: password must not contain whitespace")
        self.port = port
        self.password = password or None
        self.host = host
        self.tls = tls
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self._workdir = Path(workdir) if workdir else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        """The throwaway CA certificate clients must trust (tls=True only)."""
        return self.workdir / "tls" / "ca.crt"

    def _make_certificates(self) -> None:
        d = self.workdir / "tls"
        if (d / "server.crt").exists():
            return
        d.mkdir(mode=0o700, exist_ok=True)

        def openssl(*args: str) -> None:
            res = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise ServiceError(f"openssl {args[0]} failed: {res.stderr.strip()}")

        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=throwaway test CA",
                "-keyout", "ca.key", "-out", "ca.crt")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
                "-out", "server.csr")
        (d / "san.ext").write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
        openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", "server.crt")

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="throwaway-redis-"))
        return self._workdir

    @property
    def url(self) -> str:
        """redis:// URL (holds the password when there is one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start redis-server as a child process and wait until it answers PING."""
        if self.running:
            return
        _check_port(self.host, self.port, "ThrowawayRedis")
        conf = self.workdir / "redis.conf"
        # The password goes into a 0600 config file in our private temp dir, not argv (visible in ps).
        if self.tls:
            self._make_certificates()
            tls_dir = self.workdir / "tls"
            listen = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {tls_dir / 'server.crt'}",
                f"tls-key-file {tls_dir / 'server.key'}",
                f"tls-ca-cert-file {tls_dir / 'ca.crt'}",
                "tls-auth-clients no",
            ]
        else:
            listen = [f"port {self.port}"]
        lines = [
            *listen,
            f"bind {self.host}",
            "daemonize no",
            f"dir {self.workdir}",
            'save ""',
            "appendonly no",
            "protected-mode no",
            f"logfile {self.workdir / 'redis.log'}",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        self._proc = subprocess.Popen(
            [REDIS_SERVER, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while not self.ping():
            if self._proc.poll() is not None:
                log = (
                    (self.workdir / "redis.log").read_text()[-2000:]
                    if (self.workdir / "redis.log").exists()
                    else ""
                )
                self._proc = None
                raise ServiceError(f"redis-server on port {self.port} exited at start:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(
                    f"redis-server on port {self.port} not answering PING after {self.start_timeout}s"
                )
            time.sleep(0.05)

    def ping(self) -> bool:
        """True when the server answers PING (authenticating first when it has a password)."""
        try:
            with contextlib.ExitStack() as stack:
                s = stack.enter_context(socket.create_connection((self.host, self.port), timeout=1))
                if self.tls:
                    ctx = ssl.create_default_context(cafile=str(self.ca_file))
                    s = stack.enter_context(ctx.wrap_socket(s, server_hostname="localhost"))
                cmds = b""
                if self.password:
                    pw = self.password.encode()
                    cmds += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
                cmds += b"*1\r\n$4\r\nPING\r\n"
                s.sendall(cmds)
                data = b""
                while b"PONG" not in data and b"-" not in data[:1]:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
                return b"+PONG" in data
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and remove the temp dir (if we created it)."""
        self.stop()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def main() -> None:
    """Run both services in the foreground until SIGINT/SIGTERM (for trying the local twin by hand).

    Passwords come from THROWAWAY_PG_PASSWORD / THROWAWAY_REDIS_PASSWORD, never from argv.
    """
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--pg-port", type=int, default=55432)
    ap.add_argument("--redis-port", type=int, default=56379)
    args = ap.parse_args()
    pg_password = os.environ.get("THROWAWAY_PG_PASSWORD")
    if not pg_password:
        raise SystemExit("THROWAWAY_PG_PASSWORD is not set: export the database password to use")
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with (
        ThrowawayPostgres(args.pg_port, pg_password) as pg,
        ThrowawayRedis(args.redis_port, os.environ.get("THROWAWAY_REDIS_PASSWORD")) as rd,
    ):
        print(
            f"PostgreSQL on {pg.host}:{pg.port} (db {pg.dbname}, user {pg.user}); "
            f"Redis on {rd.host}:{rd.port}"
        )
        print("Ctrl-C to stop and remove both.", flush=True)
        while not stop:
            time.sleep(0.5)


if __name__ == "__main__":
    main()
