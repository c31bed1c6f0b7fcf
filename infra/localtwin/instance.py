"""A throwaway local instance: the QEMU twin of "launch one EC2 instance from the AMI with this user data".

The baked artifact is never written to: the instance runs on a copy-on-write overlay in a private temporary
directory, which also holds the rendered user data (secrets), the seed ISO and the SSH key. That directory and
the QEMU process are removed on every way out of the ``with`` block (success, failure, exception, Ctrl-C, and
SIGTERM when :func:`sigterm_raises` is active); QEMU is also tied to this process's life (PR_SET_PDEATHSIG)
so a killed test run cannot leave a VM burning CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.errors import PipelineError
from infra.localtwin.accel import choose_accelerator
from infra.localtwin.processes import ManagedProcess

SSH_USER = "admin"  # the default user of the base disk, as on Debian's EC2 images
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0 net.ifnames=0"
_PR_SET_PDEATHSIG = 1


class InstanceError(PipelineError, RuntimeError):
    """The instance could not be started or did not become ready; the message carries the serial log tail."""


@dataclass
class BootTimings:
    """Seconds from QEMU start to each milestone (None: not reached / not observed)."""

    ssh: float | None = None
    cloud_init_done: float | None = None
    cloud_init_status: str | None = None
    ready: float | None = None
    teardown: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (QEMU fails loudly if someone takes it before it binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM QEMU when this Python process dies,
    # whatever the cause (even SIGKILL, where no finally block runs).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while the block runs, so ``finally``/``__exit__`` teardown runs.

    Only possible in the main thread; elsewhere the block runs unchanged (PDEATHSIG still stops QEMU).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def merge_ssh_key(user_data: str, public_key: str) -> str:
    """Add ``public_key`` for the default user (admin) to a ``#cloud-config`` document, keeping everything else.

    The rendered user data (write_files with /etc/nextcloud/instance.json) is kept as is: only
    ``ssh_authorized_keys`` is extended, which cloud-init applies to the default user.
    """
    first_line = user_data.lstrip().splitlines()[0] if user_data.strip() else ""
    if first_line.strip() != "#cloud-config":
        raise InstanceError(
            "user data must be a '#cloud-config' document (first line '#cloud-config'); "
            f"got first line {first_line[:40]!r}. Render it with render/ (build/<env>/user-data.yaml)."
        )
    data = yaml.safe_load(user_data) or {}
    if not isinstance(data, dict):
        raise InstanceError("user data '#cloud-config' document must be a mapping at the top level")
    keys = list(data.get("ssh_authorized_keys") or [])
    keys.append(public_key.strip())
    data["ssh_authorized_keys"] = keys
    users = data.get("users")
    if (
        users is not None
        and "default" not in users
        and not any(isinstance(u, dict) and u.get("name") == SSH_USER for u in users)
    ):
        # A users list without 'default' would drop the admin user the key is meant for.
        data["users"] = ["default", *users]
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _disk_format(path: Path) -> str:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)["format"]


@dataclass
class Instance(ManagedProcess):
    """One throwaway QEMU (TCG) instance booted from ``disk`` with ``user_data``; use as a context manager.

    On enter: overlay + seed ISO + key, start QEMU, wait for SSH, then (``wait_ready``) for ``GET /readyz`` == 200
    through the forwarded HTTP port. On exit: stop QEMU, delete the private directory.
    """

    error = InstanceError
    stop_timeout = 15.0

    disk: Path
    kernel: Path
    initrd: Path
    user_data: str
    name: str = "nc-test-1"
    memory_mb: int = 3072
    cpus: int = 2
    timeout_s: float = 1200.0
    wait_ready: bool = True
    ready_path: str = "/readyz"
    progress: Callable[[str], None] = _stderr_progress
    keep_on_failure: bool = False

    workdir: Path | None = field(default=None, init=False)
    ssh_port: int = field(default=0, init=False)
    http_port: int = field(default=0, init=False)
    instance_id: str = field(default="", init=False)
    timings: BootTimings = field(default_factory=BootTimings, init=False)
    ready_body: Any = field(default=None, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _t0: float = field(default=0.0, init=False, repr=False)

    # ---- paths inside the private directory -------------------------------------------------------------
    @property
    def serial_log(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "serial.log"

    @property
    def ssh_key(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "id_ed25519"

    @property
    def ssh_config(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "ssh_config"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ssh_config_entry(self) -> str:
        """An ssh_config ``Host`` block for this instance (read by OpenSSH and by testinfra's paramiko backend)."""
        return (
            f"Host {self.name}\n"
            f"  HostName 127.0.0.1\n"
            f"  Port {self.ssh_port}\n"
            f"  User {SSH_USER}\n"
            f"  IdentityFile {self.ssh_key}\n"
            f"  IdentitiesOnly yes\n"
            f"  StrictHostKeyChecking no\n"
            f"  UserKnownHostsFile /dev/null\n"
            f"  LogLevel ERROR\n"
            f"  ConnectTimeout 10\n"
        )

    # ---- lifecycle -----------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path | None:
        return self.workdir / "qemu.log" if self.workdir is not None else None

    def elapsed(self) -> float:
        """Seconds since QEMU started; 0 before it has (the clock starts with the guest, not with the host)."""
        return time.monotonic() - self._t0 if self._t0 else 0.0

    def _say(self, phase: str, detail: str = "") -> None:
        self.progress(f"[{self.name} {self.elapsed():6.1f}s] {phase}{': ' + detail if detail else ''}")

    def start(self) -> None:
        """Prepare the private directory and start QEMU (does not wait)."""
        for label, p in (("disk", self.disk), ("kernel", self.kernel), ("initrd", self.initrd)):
            if not Path(p).is_file():
                raise InstanceError(
                    f"{label} {p} does not exist: bake the artifact first (build/local/manifest.json names "
                    "the disk, kernel and initrd), or build the base disk."
                )
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))  # 0700: it will hold secrets
        wd = self.workdir
        overlay = wd / "overlay.qcow2"
        backing = Path(self.disk).resolve()
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing), "-F", _disk_format(backing), str(overlay)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"localtwin-{self.name}", "-f", str(self.ssh_key)],
            check=True,
            capture_output=True,
        )
        public_key = (wd / "id_ed25519.pub").read_text()
        user_data_file = wd / "user-data"
        user_data_file.touch(mode=0o600)
        user_data_file.write_text(merge_ssh_key(self.user_data, public_key))
        # A fresh instance-id per boot: cloud-init treats the instance as new (per-instance modules, host keys).
        self.instance_id = f"i-{self.name}-{uuid.uuid4().hex[:12]}"
        (wd / "meta-data").write_text(f"instance-id: {self.instance_id}\nlocal-hostname: {self.name}\n")
        subprocess.run(
            ["cloud-localds", str(wd / "seed.iso"), str(user_data_file), str(wd / "meta-data")],
            check=True,
            capture_output=True,
        )
        self.ssh_port, self.http_port = free_port(), free_port()
        self.ssh_config.write_text(self.ssh_config_entry())
        accel = choose_accelerator(Path(self.kernel))
        self._say("starting QEMU", accel.describe())
        cmd = [
            "qemu-system-x86_64",
            "-accel",
            accel.name,
            "-cpu",
            accel.cpu,
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            f"file:{self.serial_log}",
            "-kernel",
            str(self.kernel),
            "-initrd",
            str(self.initrd),
            "-append",
            KERNEL_APPEND,
            "-drive",
            f"file={overlay},if=virtio,format=qcow2",
            "-drive",
            f"file={wd / 'seed.iso'},if=virtio,format=raw,readonly=on",
            "-netdev",
            f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.ssh_port}-:22,hostfwd=tcp:127.0.0.1:{self.http_port}-:80",
            "-device",
            "virtio-net-pci,netdev=n0",
            "-no-reboot",
        ]
        self._t0 = time.monotonic()
        # preexec_fn: needed for PDEATHSIG, no threads started yet.
        self.launch(cmd, log=wd / "qemu.log", preexec_fn=_die_with_parent)  # noqa: PLW1509
        self._say(
            "qemu started",
            f"ssh 127.0.0.1:{self.ssh_port}, http 127.0.0.1:{self.http_port}, instance-id {self.instance_id}",
        )

    def serial_tail(self, lines: int = 60) -> str:
        try:
            text = self.serial_log.read_text(errors="replace")
        except (OSError, AssertionError):
            return "(no serial log)"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, phase: str, why: str) -> InstanceError:
        qemu_log = ""
        if self.workdir and (self.workdir / "qemu.log").exists():
            qemu_log = (self.workdir / "qemu.log").read_text(errors="replace").strip()
        return InstanceError(
            f"{self.name}: {why} (phase: {phase}, after {self.elapsed():.0f}s)\n"
            + (f"--- qemu output ---\n{qemu_log}\n" if qemu_log else "")
            + f"--- serial console, last lines ---\n{self.serial_tail()}"
        )

    def _check_alive(self, phase: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._fail(phase, f"QEMU exited with status {self._proc.returncode}")

    def _ssh_banner(self) -> bool:
        # QEMU's user-mode network accepts the TCP connection even before the guest listens; only a banner
        # means sshd is really there.
        try:
            with socket.create_connection(("127.0.0.1", self.ssh_port), timeout=5) as s:
                s.settimeout(5)
                return s.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the instance as admin (OpenSSH client, this instance's key and config)."""
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", self.name, command],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def _get_ready(self) -> tuple[int | None, Any]:
        try:
            with urllib.request.urlopen(self.http_base + self.ready_path, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return None, None

    def wait(self) -> None:
        """Wait for SSH (key login works), then cloud-init and readiness; raise InstanceError on timeout."""
        deadline = self._t0 + self.timeout_s
        phase = "waiting for SSH"
        last_note = 0.0
        while True:
            self._check_alive(phase)
            if time.monotonic() > deadline:
                raise self._fail(phase, f"timed out after {self.timeout_s:.0f}s")
            if self._ssh_banner():
                try:
                    if self.ssh("true", timeout=30).returncode == 0:
                        break
                except subprocess.TimeoutExpired:
                    pass
            if self.elapsed() - last_note >= 15:
                last_note = self.elapsed()
                self._say(phase)
            time.sleep(3)
        self.timings.ssh = round(self.elapsed(), 1)
        self._say("SSH up")

        phase = "waiting for cloud-init and readiness" if self.wait_ready else "waiting for cloud-init"
        last_ready: tuple[int | None, Any] = (None, None)
        next_ci_probe = 0.0
        while True:
            self._check_alive(phase)
            if time.monotonic() > deadline:
                detail = f"last {self.ready_path}: {last_ready[0]} {last_ready[1]!r:.300}"
                raise self._fail(phase, f"timed out after {self.timeout_s:.0f}s; {detail}")
            if self.timings.cloud_init_done is None and self.elapsed() >= next_ci_probe:
                next_ci_probe = self.elapsed() + 10
                with contextlib.suppress(subprocess.TimeoutExpired):
                    r = self.ssh("cloud-init status --format json", timeout=30)
                    status = _cloud_init_status(r.stdout)
                    if status in ("done", "error", "degraded done", "disabled"):
                        self.timings.cloud_init_done = round(self.elapsed(), 1)
                        self.timings.cloud_init_status = status
                        self._say("cloud-init finished", status)
                        if not self.wait_ready:
                            return
            if self.wait_ready:
                last_ready = self._get_ready()
                if last_ready[0] == 200:
                    self.timings.ready = round(self.elapsed(), 1)
                    try:
                        self.ready_body = json.loads(last_ready[1])
                    except ValueError as e:
                        raise self._fail(phase, f"{self.ready_path} answered 200 but not JSON: {e}") from e
                    self._say("ready", f"{self.ready_path} 200 {json.dumps(self.ready_body)[:200]}")
                    return
            if self.elapsed() - last_note >= 15:
                last_note = self.elapsed()
                self._say(phase, f"{self.ready_path} -> {last_ready[0]}" if self.wait_ready else "")
            time.sleep(3)

    def wait_exited(self, timeout: float) -> bool:
        """Wait until QEMU has exited by itself (the guest powered off; -no-reboot); True if it did in time."""
        if self._proc is None:
            return True
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self) -> None:
        """Stop QEMU and delete the private directory (user data with secrets, key, overlay). Idempotent."""
        t = time.monotonic()
        super().stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self.timings.teardown = round(time.monotonic() - t, 1)
            self.progress(f"[{self.name}] torn down in {self.timings.teardown}s (VM stopped, temp dir removed)")


def _cloud_init_status(output: str) -> str | None:
    try:
        data = json.loads(output)
    except ValueError:
        return None
    status = data.get("extended_status") or data.get("status")
    return status if isinstance(status, str) else None


def main(argv: list[str] | None = None) -> int:
    """Boot a disk for manual poking: python -m infra.localtwin.instance DISK KERNEL INITRD USER_DATA."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("disk", type=Path)
    p.add_argument("kernel", type=Path)
    p.add_argument("initrd", type=Path)
    p.add_argument("user_data", type=Path)
    p.add_argument("--no-ready", action="store_true", help="stop waiting after cloud-init (no /readyz)")
    p.add_argument("--hold", action="store_true", help="keep the instance until Enter is pressed")
    a = p.parse_args(argv)
    with (
        sigterm_raises(),
        Instance(a.disk, a.kernel, a.initrd, a.user_data.read_text(), wait_ready=not a.no_ready) as inst,
    ):
        print(json.dumps(inst.timings.as_dict()))
        if a.hold:
            print(f"ssh -F {inst.ssh_config} {inst.name}")
            with contextlib.suppress(EOFError):
                input("Enter to tear down ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
