"""A real container registry on the host's loopback for the local twin (Debian's ``docker-registry``).

The twin's bake takes the path an AWS bake takes: the base image is pulled by digest from a registry. Here the
registry is Debian's ``docker-registry`` listening on ``127.0.0.1:REGISTRY_PORT`` only (its packaged config listens on
every interface and wants htpasswd: not used), with its own storage under ``build/cache/registry``; a QEMU guest
reaches it at ``10.0.2.2:REGISTRY_PORT``. Whoever needs it starts it for as long as they need it::

    with LoopbackRegistry() as registry:
        registry.push(standin_image)          # skopeo copy oci:... docker://127.0.0.1:PORT/...

The port is fixed: the guest-side address is part of the image reference a bake records (version-info, the
fingerprint), so it must not change from one run to the next.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from infra.errors import PipelineError
from infra.localtwin.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STORAGE = REPO_ROOT / "build" / "cache" / "registry"
REGISTRY_PORT = 55000
HOST_REGISTRY = f"127.0.0.1:{REGISTRY_PORT}"
# The host's loopback as a QEMU user-mode guest sees it.
GUEST_REGISTRY = f"10.0.2.2:{REGISTRY_PORT}"
START_TIMEOUT_S = 30.0


class RegistryError(PipelineError, RuntimeError):
    """The registry could not be started or an image could not be pushed; the message says why and what to do."""


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class LoopbackRegistry(ManagedProcess):
    """``docker-registry serve`` on 127.0.0.1 with a private config and storage; stopped on exit."""

    error = RegistryError
    stop_timeout = 15.0

    def __init__(self, storage: Path = DEFAULT_STORAGE, port: int = REGISTRY_PORT) -> None:
        self.storage = storage
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self._proc = None

    @property
    def log_path(self) -> Path:
        return self.storage / "registry.log"

    def start(self) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RegistryError("docker-registry not found; install it with `apt-get install docker-registry`")
        if _port_in_use(self.port):
            raise RegistryError(
                f"127.0.0.1:{self.port} is already in use: another registry (or another bake) holds the twin's "
                "registry port; let it finish, or stop what listens there"
            )
        data = self.storage / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.storage / "config.yml"
        # JSON is YAML: no YAML writer needed for five keys.
        config.write_text(json.dumps({
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(data)}},
            "http": {"addr": self.address},
        }, indent=2) + "\n")
        self.launch([binary, "serve", str(config)], log=self.log_path)
        self.wait_until(lambda: self._api("GET", "/v2/")[0] == 200, timeout=START_TIMEOUT_S, interval=0.2,
                        exited="docker-registry exited with status {status}",
                        timed_out=f"docker-registry did not answer on {self.address} within {START_TIMEOUT_S:.0f}s")

    def _api(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int | None, Any]:
        req = urllib.request.Request(f"http://{self.address}{path}", method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.headers
        except urllib.error.HTTPError as e:
            return e.code, e.headers
        except OSError:
            return None, None

    def manifest_digest(self, repository: str, reference: str) -> str | None:
        """The digest the registry serves for ``repository:reference`` (Docker-Content-Digest), or None."""
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        status, headers = self._api("HEAD", f"/v2/{repository}/manifests/{reference}", {"Accept": accept})
        return headers.get("Docker-Content-Digest") if status == 200 and headers else None

    def push(self, image: Any) -> str:
        """Copy a stand-in OCI layout (``StandinImage``) into the registry; returns the digest the registry serves.

        skopeo copies only blobs the registry lacks, so pushing an unchanged image again costs a few seconds.
        """
        if shutil.which("skopeo") is None:
            raise RegistryError("skopeo not found; install it with `apt-get install skopeo`")
        source = f"oci:{image.layout}:{image.tag}"
        dest = f"docker://{self.address}/{image.repository}:{image.tag}"
        proc = subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests", source, dest],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RegistryError(f"skopeo copy {source} {dest} failed: {proc.stderr.strip()[-1500:]}")
        served = self.manifest_digest(image.repository, image.tag)
        if served != image.digest:
            raise RegistryError(
                f"the registry serves {image.repository}:{image.tag} as {served}, not as the built image's "
                f"{image.digest}: the manifest was rewritten on the way"
            )
        return served
