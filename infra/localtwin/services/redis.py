"""A throwaway Redis server on loopback: the local stand-in for ElastiCache.

No persistence; optionally a password (``requirepass``) and TLS only (like ElastiCache with in-transit encryption,
with a throwaway CA: tls.py). Readiness is a PING through redis-py, authenticated and over TLS as a client would.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.localtwin.processes import ManagedProcess
from infra.localtwin.services.base import ServiceError, check_port
from infra.localtwin.services.tls import make_server_certificates

REDIS_SERVER = os.environ.get("REDIS_SERVER", "redis-server")


class ThrowawayRedis(ManagedProcess):
    """A private Redis server (no persistence) on ``host:port``, optionally with ``requirepass``.

    ``tls=True``: the port speaks TLS only (like ElastiCache with in-transit encryption), with a throwaway CA
    and a server certificate for ``localhost`` / 127.0.0.1; clients trust ``ca_file``.
    """

    error = ServiceError
    stop_timeout = 5.0

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
        self._proc = None

    @property
    def ca_file(self) -> Path:
        """The throwaway CA certificate clients must trust (tls=True only)."""
        return self.workdir / "tls" / "ca.crt"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="throwaway-redis-"))
        return self._workdir

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def url(self) -> str:
        """redis:// URL (holds the password when there is one)."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def _config(self) -> list[str]:
        if self.tls:
            certs = make_server_certificates(self.workdir / "tls")
            listen = [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {certs.cert}",
                f"tls-key-file {certs.key}",
                f"tls-ca-cert-file {certs.ca}",
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
            f"logfile {self.log_path}",
        ]
        if self.password:
            lines.append(f"requirepass {self.password}")
        return lines

    def start(self) -> None:
        """Start redis-server as a child process and wait until it answers PING."""
        if self.running:
            return
        check_port(self.host, self.port, "ThrowawayRedis")
        conf = self.workdir / "redis.conf"
        # The password goes into a 0600 config file in our private temp dir, not argv (visible in ps).
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(self._config()) + "\n")
        # redis-server writes its own log file (the config's logfile); its stdout and stderr are not needed.
        self.launch([REDIS_SERVER, str(conf)], start_new_session=True)
        self.wait_until(
            self.ping, timeout=self.start_timeout, interval=0.05,
            exited=f"redis-server on port {self.port} exited at start (status {{status}})",
            timed_out=f"redis-server on port {self.port} not answering PING after {self.start_timeout}s",
        )

    def ping(self) -> bool:
        """True when the server answers PING (authenticating first when it has a password)."""
        tls = {"ssl": True, "ssl_ca_certs": str(self.ca_file)} if self.tls else {}
        # One try: a probe that retries (redis-py's default) would take seconds to say "not yet".
        client = redis.Redis(host=self.host, port=self.port, password=self.password, socket_timeout=1,
                             socket_connect_timeout=1, retry=Retry(NoBackoff(), 0), **tls)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def close(self) -> None:
        """Stop the server and remove the temp dir (if we created it)."""
        self.stop()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
