"""How test-ami reaches into a canary: the ``InstanceAccess`` interface and its real implementation, SSH.

SSH goes to the canary's public or private address from this host (its security group allows only this host), or
through Session Manager (``aws ssm start-session`` as the ProxyCommand: no inbound rule at all). testinfra runs
``tests/image`` over the same path. Host keys: only those the canary printed on its console (``Target.host_keys``,
read before the first contact) are trusted, by paramiko here and by testinfra (tests/image/conftest.py makes its
paramiko backend honour ``StrictHostKeyChecking yes``); without any, the first key seen (``--accept-new-host-key``).
Tests against the AWS emulator replace this module's ``SshAccess`` with a double: an emulated instance's address
belongs to nobody.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from infra.errors import PipelineError
from infra.host_keys import HostKey

SSH_USER = "admin"  # Debian's EC2 images


class AccessFailed(PipelineError):
    """The canary could not be reached (SSH never answered)."""


class HostKeyMismatch(PipelineError):
    """The canary presented a host key that its console output did not show: never trusted, never retried."""


class InstanceAccess(Protocol):
    """Everything that reaches into the canary: SSH, its /readyz as the load balancer sees it, testinfra."""

    def wait_ssh(self, deadline: float) -> None: ...

    def readyz(self) -> tuple[int, dict[str, Any]]: ...

    def run_suite(self, root: Path, *, deselect: Sequence[str], keep_going: bool) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Target:
    """How to reach the canary."""

    instance_id: str
    address: str  # public or private IP, or the instance id through Session Manager
    region: str
    ssh_interface: str
    key_file: Path
    user: str = SSH_USER
    host_keys: tuple[HostKey, ...] = ()  # from its console: the only keys trusted; none = the first key seen
    port: int = 22

    @property
    def known_hosts_name(self) -> str:
        """The name ssh and paramiko look the address up by in known_hosts."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


AccessFactory = Callable[[Target], InstanceAccess]


class SshAccess:
    """SSH (paramiko) to the canary, from this host or through Session Manager; testinfra over the same path.

    Host keys: the run's known_hosts holds the keys of ``target.host_keys`` and nothing else is accepted
    (``StrictHostKeyChecking yes``, paramiko's ``RejectPolicy``); with none, the first key seen goes into it.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self._dir = Path(tempfile.mkdtemp(prefix="ncimage-ssh-"))
        self.known_hosts = self._dir / "known_hosts"
        self.ssh_config = self._dir / "ssh_config"
        lines = [
            "Host canary",
            f"  HostName {target.address}",
            f"  Port {target.port}",
            f"  User {target.user}",
            f"  IdentityFile {target.key_file}",
            "  IdentitiesOnly yes",
            f"  StrictHostKeyChecking {'yes' if target.host_keys else 'accept-new'}",
            f"  UserKnownHostsFile {self.known_hosts}",
        ]
        # Host names in known_hosts are what ssh connects to: the address, or the instance id through the proxy.
        self.known_hosts.write_text(
            "".join(k.known_hosts_line(target.known_hosts_name) + "\n" for k in target.host_keys))
        if self.proxy_command:
            lines.append(f"  ProxyCommand {self.proxy_command}")
        self.ssh_config.write_text("\n".join(lines) + "\n")
        self._client: Any = None

    @property
    def proxy_command(self) -> str | None:
        if self.target.ssh_interface != "session_manager":
            return None
        return ("aws ssm start-session --target %h --document-name AWS-StartSSHSession "
                f"--parameters portNumber=%p --region {shlex.quote(self.target.region)}")

    def _connect(self) -> Any:
        import paramiko

        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        # With keys from the console any other key is refused; without (--accept-new-host-key), the first is kept.
        client.set_missing_host_key_policy(
            paramiko.RejectPolicy() if self.target.host_keys else paramiko.AutoAddPolicy())
        sock = None
        if self.proxy_command:
            sock = paramiko.ProxyCommand(
                self.proxy_command.replace("%h", self.target.address).replace("%p", str(self.target.port)))
        client.connect(self.target.address, port=self.target.port, username=self.target.user,
                       key_filename=str(self.target.key_file), timeout=15, banner_timeout=30, auth_timeout=30,
                       look_for_keys=False, allow_agent=False, sock=sock)
        if not self.target.host_keys:
            client.save_host_keys(str(self.known_hosts))  # testinfra then sees the same key
        return client

    def wait_ssh(self, deadline: float) -> None:
        import paramiko

        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                self._client = self._connect()
                return
            except paramiko.BadHostKeyException as exc:
                shown = ", ".join(k.key_type for k in self.target.host_keys)
                raise HostKeyMismatch(
                    f"{self.target.instance_id} at {self.target.address} presented a {exc.key.get_name()} host key "
                    f"({exc.key.fingerprint}) that its console output did not show (it showed {shown}): something "
                    "between this host and the canary may be impersonating it; not contacted further, no verdict "
                    "recorded, what the run created was removed") from None
            except Exception as exc:  # noqa: BLE001 - sshd not up yet, refused, reset: all mean "try again"
                last = exc
                time.sleep(max(0.0, min(5.0, deadline - time.monotonic())))  # never past the deadline
        raise AccessFailed(f"SSH to {self.target.address} did not answer before the timeout ({last})")

    def readyz(self) -> tuple[int, dict[str, Any]]:
        _, out, _ = self._client.exec_command(
            "curl -sS --max-time 10 -o - -w '\\n%{http_code}' http://127.0.0.1/readyz", timeout=30)
        body, _, code = out.read().decode(errors="replace").rpartition("\n")
        try:
            doc = json.loads(body) if body.strip() else {}
        except ValueError:
            doc = {"reason": body[:200]}
        return int(code) if code.isdigit() else 0, doc if isinstance(doc, dict) else {}

    def run_suite(self, root: Path, *, deselect: Sequence[str], keep_going: bool) -> int:
        cmd = [sys.executable, "-m", "pytest", "tests/image", "--hosts=paramiko://canary",
               f"--ssh-config={self.ssh_config}", "--sudo", "-p", "no:cacheprovider",
               *([] if keep_going else ["--maxfail=1"]), *(f"--deselect={d}" for d in deselect)]
        env = {**os.environ, "NEXTCLOUD_TEST_INSTANCE_IDS": json.dumps({"canary": self.target.instance_id})}
        return subprocess.run(cmd, cwd=root, env=env).returncode

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        shutil.rmtree(self._dir, ignore_errors=True)
