"""Nodes of one Nextcloud cluster: containers of the derived image on the host's network, one Apache port each.

A node is what one EC2 instance runs (``nextcloud.service``): the baked image, the non-secret environment, the
runtime secrets in a 0600 env file mounted at ``/run/secrets/nextcloud-runtime.env`` (never in the container's
environment or a process argument), an empty read-only tmpfs on ``/var/www/html`` (so no volume is created) and
the host's network. On AWS each instance has its own address and port 80; here two nodes share one loopback, so
each gets its own port: the lane mounts the image's own ``ports.conf`` and default site with ``80`` replaced by the
node's port (read from the built image, so the site configuration under test stays the image's).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import resource
import secrets
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.errors import PipelineError
from infra.lane.admin_socket import CONTAINER_DIR as ADMIN_SOCKET_DIR
from infra.lane.admin_socket import AdminPasswordSocket
from infra.lane.engine import NPROC_LIMIT
from infra.lane.services import S3_KEY, S3_REGION, LaneServices
from render.secret_refs import SECRET_VARIABLES

RUNTIME_ENV = "/run/secrets/nextcloud-runtime.env"
PORTS_CONF = "/etc/apache2/ports.conf"
SITE_CONF = "/etc/apache2/sites-available/000-default.conf"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
STATE_FILE = "/dev/shm/nextcloud-cluster/state.json"
LABEL = "nextcloud-image.lane"
REPO_ROOT = Path(__file__).resolve().parents[2]
# The instance's flag set (nextcloud.service reads the same file): the lane runs every node with it.
CONTAINER_RUNTIME_ENV = REPO_ROOT / "image" / "rootfs" / "etc" / "nextcloud-image" / "container-runtime.env"
CONTAINER_MEMORY = REPO_ROOT / "image" / "rootfs" / "usr/local/libexec/nextcloud-image" / "size-container-memory"


class LaneError(PipelineError, RuntimeError):
    """A node did not come up or a step of the lane failed; the message carries the node's last log lines."""


def container_runtime_flags(path: Path = CONTAINER_RUNTIME_ENV, memory_script: Path | None = CONTAINER_MEMORY,
                            ) -> list[str]:
    """The ``docker run`` flags an instance's nextcloud.service passes: the hardening line of ``path`` as systemd splits
    it (on whitespace, nothing unquoted) and the memory limit ``memory_script`` computes for this machine."""
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
            raise LaneError(f"{path}:{number}: expected NAME=VALUE, got {line!r}")
        values[name] = value
    if "NEXTCLOUD_CONTAINER_HARDENING" not in values:
        raise LaneError(f"{path}: no NEXTCLOUD_CONTAINER_HARDENING line (the flags nextcloud.service passes)")
    flags = values["NEXTCLOUD_CONTAINER_HARDENING"].split()
    if memory_script is not None:
        out = subprocess.run([str(memory_script)], capture_output=True, text=True, timeout=30, check=False)
        name, _, value = out.stdout.strip().partition("=")
        if out.returncode != 0 or name != "NEXTCLOUD_CONTAINER_MEMORY":
            raise LaneError(f"{memory_script} failed (exit {out.returncode}): {out.stderr.strip() or out.stdout}")
        flags += value.split()
    return flags


def docker_sdk_runtime(flags: list[str]) -> dict[str, Any]:
    """``docker run`` flags (``--name=value`` form) as the Docker SDK's ``containers.run`` arguments. A flag it does
    not know is an error: the lane must run nodes with every flag an instance gets, or say it cannot."""
    import docker.types

    kwargs: dict[str, Any] = {"cap_drop": [], "cap_add": [], "security_opt": [], "ulimits": []}
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not value:
            raise LaneError(f"container runtime flag {flag!r}: write --name=value")
        if name in ("--cap-drop", "--cap-add", "--security-opt"):
            kwargs[name[2:].replace("-", "_")].append(value)
        elif name == "--pids-limit" and value.isdigit():
            kwargs["pids_limit"] = int(value)
        elif name == "--memory" and re.fullmatch(r"[1-9][0-9]*[kmg]?", value):
            kwargs["mem_limit"] = value
        elif name == "--ulimit" and re.fullmatch(r"[a-z]+=[0-9]+(:[0-9]+)?", value):
            limit, _, numbers = value.partition("=")
            soft, _, hard = numbers.partition(":")
            kwargs["ulimits"].append(docker.types.Ulimit(name=limit, soft=int(soft), hard=int(hard or soft)))
        else:
            raise LaneError(f"container runtime flag {flag!r}: the lane does not know how to pass it to the Docker SDK "
                            "(infra/lane/cluster.py docker_sdk_runtime)")
    return {k: v for k, v in kwargs.items() if v != []}


def _with_engine_ulimits(runtime: dict[str, Any]) -> dict[str, Any]:
    """Podman's Docker API takes a container's ulimits as the whole list: given only core=0, it sets its built-in
    1048576 open files and processes, which runc may not set here (infra/lane/engine.py). So the lane adds the
    engine's own defaults back, as dockerd on an instance keeps its defaults beside --ulimit core=0."""
    import docker.types

    named = {u["Name"] for u in runtime.get("ulimits", [])}
    if not named:
        return runtime
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], NPROC_LIMIT)
    extra = [docker.types.Ulimit(name=n, soft=v, hard=v) for n, v in (("nofile", nofile), ("nproc", nproc))
             if n not in named]
    return runtime | {"ulimits": [*runtime["ulimits"], *extra]}


def identity_digest(instanceid: str, passwordsalt: str, secret: str) -> str:
    """The cluster row's identity digest, as image/nextcloud/README.md defines it."""
    return hashlib.sha256(f"nextcloud-cluster-identity\0{instanceid}\0{passwordsalt}\0{secret}".encode()).hexdigest()


@dataclass(frozen=True)
class Identity:
    instanceid: str = field(default_factory=lambda: "oc" + secrets.token_hex(5))
    passwordsalt: str = field(default_factory=lambda: secrets.token_hex(15))
    secret: str = field(default_factory=lambda: secrets.token_hex(24))

    @property
    def digest(self) -> str:
        return identity_digest(self.instanceid, self.passwordsalt, self.secret)


def _read_file(client: Any, image: str, path: str) -> str:
    """A file of ``image`` (from a created, never started container)."""
    container = client.containers.create(image, entrypoint=["/bin/true"], labels={LABEL: "probe"})
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.getmembers()[0]
            return tar.extractfile(member).read().decode()  # type: ignore[union-attr]
    finally:
        container.remove(force=True)


def port_override(client: Any, image: str, port: int) -> dict[str, str]:
    """``{container path: content}``: the image's ports.conf and default site listening on ``port`` instead of 80."""
    ports = _read_file(client, image, PORTS_CONF)
    site = _read_file(client, image, SITE_CONF)
    new_ports, n_listen = ports.replace("Listen 80\n", f"Listen 127.0.0.1:{port}\n"), ports.count("Listen 80\n")
    new_site, n_vhost = site.replace("<VirtualHost *:80>", f"<VirtualHost *:{port}>"), site.count("<VirtualHost *:80>")
    if n_listen != 1 or n_vhost != 1:
        raise LaneError(f"{image}: expected one 'Listen 80' in {PORTS_CONF} and one '<VirtualHost *:80>' in "
                        f"{SITE_CONF} (found {n_listen} and {n_vhost}); the lane cannot give the node its own port")
    return {PORTS_CONF: new_ports, SITE_CONF: new_site}


@dataclass
class Node:
    name: str
    port: int
    container: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def http(self, path: str, *, method: str = "GET", data: bytes | None = None,
             auth: tuple[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request to this node; an HTTP error status is an answer, not a raise."""
        req = urllib.request.Request(self.url + path, method=method, data=data)
        if auth:
            import base64
            req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - loopback only
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def readyz(self) -> tuple[int | None, dict[str, Any]]:
        try:
            status, _, body = self.http("/readyz", timeout=5)
        except OSError as exc:
            return None, {"reason": str(exc)}
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"raw": body[:200].decode(errors="replace")}

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll ``/readyz`` every second until 200; the last answer and the log tail on timeout."""
        deadline = time.monotonic() + timeout
        answer: tuple[int | None, dict[str, Any]] = (None, {})
        while time.monotonic() < deadline:
            answer = self.readyz()
            if answer[0] == 200:
                return answer[1]
            self.container.reload()
            if self.container.status not in ("created", "running"):
                break
            time.sleep(1)
        raise LaneError(f"{self.name} not ready after {timeout:.0f}s (last /readyz: {answer}, container "
                        f"{self.container.status}):\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.container.logs(stdout=True, stderr=True).decode(errors="replace")

    def exec(self, *argv: str, user: str = "root") -> tuple[int, str]:
        rc, out = self.container.exec_run(list(argv), user=user, demux=False)
        return rc, (out or b"").decode(errors="replace")

    def state(self) -> dict[str, Any]:
        rc, out = self.exec("cat", STATE_FILE)
        return json.loads(out) if rc == 0 else {}

    def effective_config(self) -> dict[str, Any]:
        """The config as Nextcloud merges it inside this node (the image's own loader, with the runtime env)."""
        script = ("require '/usr/local/lib/nextcloud-cluster/lib.php'; "
                  "echo json_encode(\\NextcloudCluster\\loadConfig());")
        rc, out = self.exec("bash", "-c", ". /usr/local/lib/nextcloud-cluster/env-file.sh && "
                            f"load_env_file {RUNTIME_ENV} && exec php -r \"$0\"", script)
        if rc != 0:
            raise LaneError(f"{self.name}: reading the effective config failed ({rc}): {out[-1500:]}")
        return json.loads(out)

    def has_file(self, path: str) -> bool:
        return self.exec("test", "-e", path)[0] == 0

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.container.remove(force=True, v=True)


class Cluster:
    """Start nodes of ``image`` against ``services`` with one cluster identity; every node removed on close()."""

    def __init__(self, client: Any, services: LaneServices, workdir: Path, bucket: str,
                 identity: Identity | None = None, admin_password: str | None = None) -> None:
        self.client = client
        self.services = services
        self.workdir = workdir
        self.bucket = bucket
        self.identity = identity or Identity()
        self.admin_user = "admin"
        self.admin_password = admin_password or "adm-" + secrets.token_hex(12)
        # Only the installing node asks for the admin password, over the host's socket (never in runtime.env).
        self.nodes: list[Node] = []
        # The user data names only the contract's secrets (the resolver refuses any other key); the S3 keys stand in
        # for the instance role here and reach the nodes through runtime.env alone.
        self.admin_socket = AdminPasswordSocket({
            k: v for k, v in {**self.runtime_env(), "NEXTCLOUD_ADMIN_PASSWORD": self.admin_password}.items()
            if k in SECRET_VARIABLES.values()})

    def environment(self, *, allow_install: bool, allow_upgrade: bool) -> dict[str, str]:
        """The non-secret environment (``/etc/nextcloud/nextcloud.env`` on an instance)."""
        pg, redis, s3 = self.services.pg, self.services.redis, self.services.s3
        return {
            "NEXTCLOUD_DB_HOST": "127.0.0.1", "NEXTCLOUD_DB_PORT": str(pg.port),
            "NEXTCLOUD_DB_NAME": pg.dbname, "NEXTCLOUD_DB_USER": pg.user,
            # The throwaway certificate names localhost (ElastiCache's names its endpoint): verified by name.
            "NEXTCLOUD_REDIS_HOST": "localhost", "NEXTCLOUD_REDIS_PORT": str(redis.port), "NEXTCLOUD_REDIS_TLS": "1",
            "NEXTCLOUD_S3_BUCKET": self.bucket, "NEXTCLOUD_S3_REGION": S3_REGION,
            "NEXTCLOUD_S3_ENDPOINT": s3.url, "NEXTCLOUD_S3_PATH_STYLE": "1",
            "NEXTCLOUD_TRUSTED_DOMAINS": "localhost 127.0.0.1",
            "NEXTCLOUD_ADMIN_USER": self.admin_user,
            "NEXTCLOUD_ALLOW_INSTALL": "1" if allow_install else "0",
            "NEXTCLOUD_ALLOW_UPGRADE": "1" if allow_upgrade else "0",
            "NEXTCLOUD_INIT_WAIT_TIMEOUT": "0",
            # Offline, as every machine here: without it cron.php waits minutes on Nextcloud's update check.
            "NEXTCLOUD_HAS_INTERNET": "0",
        }

    def runtime_env(self) -> dict[str, str]:
        """The secrets (``/run/nextcloud/runtime.env`` on an instance, resolved from Secrets Manager)."""
        return {
            "NEXTCLOUD_INSTANCEID": self.identity.instanceid,
            "NEXTCLOUD_PASSWORDSALT": self.identity.passwordsalt,
            "NEXTCLOUD_SECRET": self.identity.secret,
            "NEXTCLOUD_DB_PASSWORD": self.services.pg.password,
            "NEXTCLOUD_REDIS_PASSWORD": self.services.redis.password or "",
            "NEXTCLOUD_S3_KEY": S3_KEY,
            "NEXTCLOUD_S3_SECRET": self.services.s3.secret,
        }

    def _write(self, path: Path, content: str, mode: int) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as f:
            f.write(content)
        return path

    def start_node(self, name: str, image: str, port: int, *, allow_install: bool = True,
                   allow_upgrade: bool = False, extra_env: dict[str, str] | None = None) -> Node:
        """Create and start one node (returns at once; ``Node.wait_ready`` waits for it)."""
        import docker.types

        files = self.workdir / name
        runtime = self._write(files / "runtime.env",
                              "".join(f"{k}={v}\n" for k, v in self.runtime_env().items()), 0o600)
        mounts = [
            docker.types.Mount(RUNTIME_ENV, str(runtime), type="bind", read_only=True),
            docker.types.Mount(CA_BUNDLE, str(self.services.ca_bundle), type="bind", read_only=True),
            docker.types.Mount("/var/www/html", None, type="tmpfs", read_only=True),
            docker.types.Mount(ADMIN_SOCKET_DIR, str(self.admin_socket.dir), type="bind", read_only=True),
        ]
        for target, content in port_override(self.client, image, port).items():
            host = self._write(files / Path(target).name, content, 0o644)
            mounts.append(docker.types.Mount(target, str(host), type="bind", read_only=True))
        env = self.environment(allow_install=allow_install, allow_upgrade=allow_upgrade) | {
            # Readiness asks this node's own status.php, which Apache serves on the node's port here.
            "NEXTCLOUD_STATUS_URL": f"http://127.0.0.1:{port}/status.php",
        } | (extra_env or {})
        container = self.client.containers.run(
            image, name=f"lane-{name}-{secrets.token_hex(3)}", detach=True, network_mode="host",
            environment=env, mounts=mounts, labels={LABEL: name},
            stop_signal="SIGWINCH", **_with_engine_ulimits(docker_sdk_runtime(container_runtime_flags())))
        node = Node(name, port, container)
        self.nodes.append(node)
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.remove()
        self.nodes.clear()
        self.admin_socket.close()
