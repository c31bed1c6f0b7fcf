"""The host's ``nextcloud-admin-password.socket`` and ``nextcloud-admin-seal.socket`` for the lane's nodes.

On an instance systemd listens on ``/run/nextcloud-admin/password.sock`` (``Accept=yes``) and runs
``resolve-secrets --print-admin-password`` per connection, its stdout the connection; the directory is mounted
into the container, and only the node that installs connects. Beside it ``seal.sock`` runs
``resolve-secrets --seal-admin-password`` once the cluster is installed (with literals: nothing to seal).
Here there is no systemd unit per node, so this class plays systemd's part and nothing else: the program answering
each connection is the image's own resolver, reading an instance document with ``literal:`` references (as the
local twin's) and the image's reference contract.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from render.secret_refs import render_contract

REPO_ROOT = Path(__file__).resolve().parents[2]
RESOLVER = REPO_ROOT / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image" / "resolve-secrets"
CONTAINER_DIR = "/run/nextcloud-admin"  # where nextcloud.service mounts the socket's directory


class AdminPasswordSocket:
    """One real ``resolve-secrets --print-admin-password`` per connection to ``path`` and one
    ``--seal-admin-password`` per connection to ``seal_path``; counts both."""

    def __init__(self, secrets: dict[str, str], environment: str = "lane") -> None:
        """``secrets``: every value the instance document references (NEXTCLOUD_ADMIN_PASSWORD among them)."""
        self.dir = Path(tempfile.mkdtemp(prefix="nc-admin-", dir="/tmp"))  # a unix socket path must stay short
        self.dir.chmod(0o700)  # DirectoryMode=0700, as the unit's
        self.path = self.dir / "password.sock"
        self._instance_json = self.dir / "instance.json"
        self._instance_json.write_text(json.dumps({
            "schema": 1, "environment": environment, "region": "eu-west-1",
            "role": {"allow_install": True, "allow_upgrade": True},
            "secrets": {name: f"literal:{value}" for name, value in secrets.items()},
        }))
        self._instance_json.chmod(0o600)
        self._references = self.dir / "secret-references.json"
        self._references.write_text(render_contract(), encoding="utf-8")
        # What the local twin's image bakes into /etc/nextcloud/nextcloud.env for builder "local": the resolver allows
        # literal values only on such an image.
        self._image_env = self.dir / "nextcloud.env"
        self._image_env.write_text("NEXTCLOUD_LOG_DESTINATION=journal\n", encoding="utf-8")
        self.seal_path = self.dir / "seal.sock"
        self.fetches = 0
        self.seals = 0
        self._servers = [self._listen(self.path, "--print-admin-password"),
                         self._listen(self.seal_path, "--seal-admin-password")]

    def _listen(self, path: Path, mode: str) -> socket.socket:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        path.chmod(0o600)  # SocketMode=0600: only root (the container's cluster init) connects
        server.listen(4)
        threading.Thread(target=self._serve, args=(server, mode), daemon=True).start()
        return server

    def _serve(self, server: socket.socket, mode: str) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if mode == "--seal-admin-password":
                    self.seals += 1
                else:
                    self.fetches += 1
                subprocess.run([sys.executable, "-I", str(RESOLVER), mode,
                                "--instance-json", str(self._instance_json), "--references", str(self._references),
                                "--image-env", str(self._image_env)],
                               stdout=conn.fileno(), stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                               timeout=60, check=False)

    def close(self) -> None:
        for server in self._servers:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        shutil.rmtree(self.dir, ignore_errors=True)
