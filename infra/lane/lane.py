"""The real-Nextcloud test lane: the derived image built on a base, two nodes of it against PostgreSQL, Redis with
TLS and an S3 endpoint on loopback (``tests/integration/test_nextcloud_lane.py`` holds the assertions).

    with open_lane(base="nextcloud:34.0.3-apache@sha256:…", workdir=tmp, log=print) as lane:
        a = lane.cluster.start_node("a", lane.image, lane.ports[0]) ...

``base``: the image to build on. The official, digest-pinned image (GitHub CI, where Docker pulls it), or None for
the stand-in (``infra/localtwin/standin``, a test fixture without Nextcloud code), which is built (cached) and
served from a private registry on loopback, so the engine pulls it by digest exactly as it pulls the official one.
The engine: ``DOCKER_HOST``/the default socket when a Docker engine answers there, else a private Podman API
service (``infra/lane/engine.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.errors import Refusal
from infra.lane.cluster import Cluster
from infra.lane.engine import (
    EngineError,
    PodmanService,
    build_image,
    engine_client,
    engine_name,
    ensure_image,
    image_labels,
)
from infra.lane.services import LaneServices
from infra.localtwin.instance import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTEXT = REPO_ROOT / "image" / "nextcloud"
STANDIN_LABEL = "org.opencontainers.image.description"
Log = Callable[[str], None]


def is_standin(image: Any) -> bool:
    """True for the stand-in base (its label says TEST FIXTURE), False for the official image."""
    return image_labels(image).get(STANDIN_LABEL, "").startswith("TEST FIXTURE")


@dataclass
class Lane:
    client: Any
    engine: str
    base: str
    image: str  # the derived image's tag
    standin: bool
    services: LaneServices
    cluster: Cluster
    workdir: Path
    build_seconds: float

    def new_cluster(self, bucket: str | None = None) -> Cluster:
        """A fresh cluster: an empty database, a new bucket, a new identity (the old cluster's nodes removed)."""
        self.cluster.close()
        self.services.pg.reset_database()
        name = bucket or f"lane-{secrets.token_hex(4)}"
        self.services.s3.create_bucket(name)
        self.cluster = Cluster(self.client, self.services, self.workdir / name, name)
        return self.cluster

    def build(self, base: str, tag: str, log: Log) -> str:
        """The derived image on ``base`` (pulled when missing), tagged ``tag``."""
        ensure_image(self.client, base, log)
        build_image(self.client, CONTEXT, tag, {"BASE_IMAGE": base}, log)
        return tag


def docker_engine_available() -> bool:
    """A Docker engine answers at DOCKER_HOST or the default socket."""
    if os.environ.get("DOCKER_HOST"):
        return True
    return Path("/var/run/docker.sock").exists()


@contextlib.contextmanager
def _standin_base(workdir: Path, log: Log) -> Iterator[tuple[str, str]]:
    """(registry address, digest-pinned reference) of the stand-in, served by a private loopback registry."""
    from infra.localtwin.build import nextcloud_base_image
    from infra.localtwin.registry import LoopbackRegistry
    from render.settings import load_settings

    # The local environment's base: the verified release named by nextcloud.release (NCIMAGE_NEXTCLOUD__RELEASE),
    # else the stand-in.
    settings = load_settings(REPO_ROOT, "local").settings
    image = nextcloud_base_image(settings, log)
    with LoopbackRegistry(storage=workdir / "registry", port=free_port()) as registry:
        registry.push(image)
        yield registry.address, image.reference(registry.address)


@contextlib.contextmanager
def open_lane(base: str | None, workdir: Path, log: Log = print) -> Iterator[Lane]:
    """Engine, base image, derived image and services; everything started here is removed on exit."""
    with contextlib.ExitStack() as stack:
        registries: tuple[str, ...] = ()
        if base is None:
            registry, base = stack.enter_context(_standin_base(workdir, log))
            registries = (registry,)
        if docker_engine_available():
            client = engine_client()
        else:
            podman = stack.enter_context(PodmanService(workdir / "podman", insecure_registries=registries))
            stack.callback(podman.cleanup)
            client = engine_client(podman.docker_host)
        stack.callback(client.close)
        engine = engine_name(client)
        log(f"engine: {engine}")
        started = time.monotonic()
        base_image = ensure_image(client, base, log)
        tag = f"nextcloud-lane:{secrets.token_hex(4)}"
        build_image(client, CONTEXT, tag, {"BASE_IMAGE": base}, log)
        stack.callback(_remove_image, client, tag)
        build_seconds = time.monotonic() - started
        services = stack.enter_context(LaneServices(workdir / "services"))
        bucket = services.s3.create_bucket(f"lane-{secrets.token_hex(4)}")
        cluster = Cluster(client, services, workdir / "cluster", bucket)
        lane = Lane(client, engine, base, tag, is_standin(base_image), services, cluster, workdir, build_seconds)
        stack.callback(lambda: lane.cluster.close())
        yield lane


def _remove_image(client: Any, tag: str) -> None:
    with contextlib.suppress(Exception):
        client.images.remove(tag, force=True)


__all__ = ["EngineError", "Lane", "is_standin", "open_lane"]


TEST_FILE = REPO_ROOT / "tests" / "integration" / "test_nextcloud_lane.py"
_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._/:-]*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[0-9a-f]{64})?")


class LaneUsageError(Refusal, ValueError):
    """A bad --base/--upgrade-from; the message names the flag and the fix."""


def lane_base(settings: Any, base: str | None) -> str | None:
    """The base the lane builds on: ``--base``, else the settings' image (an AWS environment: the digest-pinned
    official image), else None: the stand-in (the local environment's image is the stand-in's name)."""
    if base:
        return base
    return None if settings.builder == "local" else settings.nextcloud.image


def run_lane(base: str | None, upgrade_from: str | None = None, pytest_args: tuple[str, ...] = ()) -> int:
    """Run the lane's tests (``tests/integration/test_nextcloud_lane.py``) on ``base``; returns pytest's exit code."""
    import subprocess
    import sys

    for flag, value in (("--base", base), ("--upgrade-from", upgrade_from)):
        if value is not None and not _REFERENCE.fullmatch(value):
            raise LaneUsageError(f"{flag} {value!r} is not an image reference: write repo:tag or "
                                 "repo:tag@sha256:<64 hex>, e.g. nextcloud:34.0.3-apache@sha256:…")
    env = {k: v for k, v in os.environ.items() if k not in ("LANE_BASE", "LANE_UPGRADE_FROM")}
    if base:
        env["LANE_BASE"] = base
    if upgrade_from:
        env["LANE_UPGRADE_FROM"] = upgrade_from
    print(f"lane: base {base or 'the stand-in (test fixture, no Nextcloud code)'}", flush=True)
    return subprocess.run([sys.executable, "-m", "pytest", str(TEST_FILE), "-v", "-rs", *pytest_args],
                          cwd=REPO_ROOT, env=env).returncode
