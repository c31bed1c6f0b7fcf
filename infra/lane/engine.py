"""The container engine the lane drives: any Docker-compatible engine, through the ``docker`` SDK.

``engine_client()`` talks to whatever ``DOCKER_HOST`` (or the default socket) names: Docker on a GitHub runner.
Where no Docker engine runs (this project's development machines), ``PodmanService`` starts Podman's API service
(Debian's podman 4.3, the ``runc`` runtime) on a unix socket in a private directory, with its own storage root, and
the same SDK calls drive it. Podman never listens on TCP here.

Image builds go through the SDK (``images.build``) on either engine; ``build_image`` streams the build's output.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.errors import PipelineError
from infra.localtwin.processes import ManagedProcess

Log = Callable[[str], None]
START_TIMEOUT_S = 60.0
NPROC_LIMIT = 32768


class EngineError(PipelineError, RuntimeError):
    """The engine could not be reached or refused a step; the message says what and what to do."""


def engine_client(docker_host: str | None = None, timeout: int = 600) -> Any:
    """A docker SDK client for ``docker_host`` (default: ``DOCKER_HOST`` or the default socket), checked with ping."""
    import docker

    try:
        client = docker.DockerClient(base_url=docker_host, timeout=timeout) if docker_host else docker.from_env(
            timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        where = docker_host or os.environ.get("DOCKER_HOST") or "the default socket"
        raise EngineError(f"no Docker-compatible engine answers at {where} ({exc}); start one (Docker, or "
                          "`podman system service`) and set DOCKER_HOST") from None
    return client


def engine_name(client: Any) -> str:
    """``Docker Engine 24.0.7`` / ``Podman Engine 4.3.1``: the engine's own components, as it reports them."""
    version = client.version()
    for component in version.get("Components") or []:
        if component.get("Name") in ("Engine", "Podman Engine"):
            return f"{component['Name'].replace('Engine', '').strip() or 'Docker'} Engine {component.get('Version')}"
    return f"engine {version.get('Version')}"


class PodmanService(ManagedProcess):
    """``podman system service`` on ``unix://<workdir>/podman.sock`` with storage under ``workdir``; stopped on exit.

    ``insecure_registries``: loopback registries (``127.0.0.1:PORT``) it may pull from over plain HTTP.
    Rootful (the storage root and the containers belong to root); ``runc`` as the OCI runtime, because Debian's
    podman 4.3 default (crun) is not what this project proved.
    """

    error = EngineError
    stop_timeout = 20.0

    def __init__(self, workdir: Path, insecure_registries: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.socket = workdir / "podman.sock"
        self.docker_host = f"unix://{self.socket}"
        self.insecure_registries = insecure_registries
        self._proc = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "service.log"

    def _podman(self) -> list[str]:
        return ["podman", "--root", str(self.workdir / "storage"), "--runroot", str(self.workdir / "run"),
                "--storage-driver", "overlay"]

    def _env(self) -> dict[str, str]:
        conf = self.workdir / "containers.conf"
        # Explicit ulimits: rootful podman asks runc for 1048576 open files and processes, more than a process may
        # set here (runc: "error setting rlimit type 7/6: operation not permitted", for containers and build steps
        # alike). Open files: our own limit. Processes: at most 32768, measured as what runc may set on this machine
        # (65536 is refused although the shell's own limit is higher); plenty for Apache's prefork children.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], NPROC_LIMIT)
        conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n\n'
                        '[engine]\nruntime = "runc"\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n')
        registries = self.workdir / "registries.conf"
        registries.write_text("".join(f'[[registry]]\nlocation = "{r}"\ninsecure = true\n\n'
                                      for r in self.insecure_registries))
        return {**os.environ, "CONTAINERS_CONF": str(conf), "CONTAINERS_REGISTRIES_CONF": str(registries)}

    def start(self) -> None:
        if shutil.which("podman") is None:
            raise EngineError("podman not found; install it with `apt-get install podman runc`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.launch([*self._podman(), "system", "service", "--time=0", self.docker_host], log=self.log_path,
                    env=self._env(), start_new_session=True)
        try:
            self.wait_until(self.socket.exists, timeout=START_TIMEOUT_S, interval=0.1, tail=1500,
                            exited=f"podman system service did not start on {self.socket} (exit status {{status}})",
                            timed_out=f"podman system service did not start on {self.socket}")
        except EngineError:
            self.stop()  # unmounts what it left, also when start() is called outside a with block
            raise

    def cleanup(self) -> None:
        """Remove every container and image of this private storage (its directory goes with the caller's tmp)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([*self._podman(), "rm", "--all", "--force", "--volumes"], env=self._env(),
                           capture_output=True, timeout=120)
            subprocess.run([*self._podman(), "system", "reset", "--force"], env=self._env(), capture_output=True,
                           timeout=120)

    def stop(self) -> None:
        super().stop()
        self._unmount()

    def _unmount(self) -> None:
        """Podman leaves its overlay storage mounted (on itself, and per container): unmount what lies under
        ``workdir`` so the directory can be removed."""
        prefix = str(self.workdir.resolve()) + "/"
        with contextlib.suppress(OSError):
            mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
                subprocess.run(["umount", "--lazy", target], capture_output=True, check=False)


def ensure_image(client: Any, reference: str, log: Log) -> Any:
    """The image ``reference`` names, pulled when the engine does not have it yet (``repo:tag@sha256:…`` pulls by
    digest: the engine checks the content against it)."""
    import docker

    try:
        return client.images.get(reference)
    except docker.errors.ImageNotFound:
        pass
    log(f"pulling {reference} ...")
    started = time.monotonic()
    repo, _, digest = reference.partition("@")
    name, sep, tag = repo.rpartition(":")
    if not sep or "/" in tag:
        name, tag = repo, None
    try:
        image = client.images.pull(name, tag=digest or tag)
    except docker.errors.APIError as exc:
        raise EngineError(f"cannot pull {reference}: {exc.explanation or exc}") from None
    log(f"pulled {reference} in {time.monotonic() - started:.0f}s")
    return image


def build_image(client: Any, context: Path, tag: str, buildargs: dict[str, str], log: Log) -> Any:
    """``docker build --build-arg ... -t tag context`` through the engine's API; the build's output is logged."""
    import docker

    started = time.monotonic()
    log(f"building {tag} from {context} ({', '.join(f'{k}={v}' for k, v in buildargs.items())}) ...")
    image_id = None
    tail: list[str] = []
    try:
        for chunk in client.api.build(path=str(context), tag=tag, buildargs=buildargs, rm=True, forcerm=True,
                                      decode=True, pull=False):
            if "error" in chunk or "errorDetail" in chunk:
                detail = chunk.get("errorDetail", {}).get("message") or chunk.get("error")
                raise EngineError(f"building {tag} failed: {detail}\n" + "".join(tail[-20:]))
            text = chunk.get("stream") or ""
            if text:
                tail.append(text)
            aux = chunk.get("aux") or {}
            image_id = aux.get("ID", image_id)
    except docker.errors.APIError as exc:
        raise EngineError(f"building {tag} failed: {exc.explanation or exc}") from None
    image = client.images.get(tag)
    if image_id and image.id != image_id:
        raise EngineError(f"the engine built {image_id} but {tag} names {image.id}")
    log(f"built {tag} ({image.short_id}) in {time.monotonic() - started:.0f}s")
    return image


def image_labels(image: Any) -> dict[str, str]:
    """The image's labels (empty dict when it has none)."""
    return dict((image.attrs.get("Config") or {}).get("Labels") or {})


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
