"""Support code for the image suite: shell helpers for target commands, and host-side read-only access to
the baked artifact (byte scans, file reads). Never writes to the artifact: conversions go to a private directory.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

CHUNK = 16 * 1024 * 1024
# Secrets an instance does not resolve at boot: only the node that installs fetches the admin password, on demand.
ON_DEMAND_SECRETS = frozenset({"NEXTCLOUD_ADMIN_PASSWORD"})


# ---- reaching the target -----------------------------------------------------------------------
def honour_strict_host_key_checking() -> None:
    """Make testinfra's paramiko backend check host keys as OpenSSH would with the same ssh_config.

    testinfra (10.x) reads ``StrictHostKeyChecking`` only for ``no`` and never reads ``UserKnownHostsFile``: it
    accepts any host key with a warning. inv test-ami on AWS writes the canary's keys (read from its console) into
    the run's known_hosts and says ``StrictHostKeyChecking yes``; with this, a host whose key is not listed there is
    refused (paramiko's ``BadHostKeyException`` / ``RejectPolicy``). ``accept-new`` checks the listed keys and
    accepts an unlisted host; ``no`` and an absent option behave as before."""
    try:
        import paramiko
        from testinfra.backend import paramiko as backend
    except ImportError:
        return
    original = backend.ParamikoBackend._load_ssh_config
    if getattr(original, "honours_known_hosts", False):
        return

    def load(self, client, cfg, ssh_config, ssh_config_dir="~/.ssh"):  # noqa: ANN001 - testinfra's signature
        original(self, client, cfg, ssh_config, ssh_config_dir)
        options = ssh_config.lookup(self.host.name)
        strict = options.get("stricthostkeychecking")
        if strict not in ("yes", "accept-new"):
            return
        for name in str(options.get("userknownhostsfile") or "").split():
            path = os.path.expanduser(name)
            if os.path.isfile(path):
                client.load_host_keys(path)
        client.set_missing_host_key_policy(paramiko.RejectPolicy() if strict == "yes" else paramiko.AutoAddPolicy())

    load.honours_known_hosts = True  # type: ignore[attr-defined]
    backend.ParamikoBackend._load_ssh_config = load


# ---- target command helpers -------------------------------------------------------------------
def decode_on_target(value: str) -> str:
    """A shell fragment that yields ``value`` on the target without the value appearing in the command.

    With ``--sudo`` every command line is logged by sudo to the journal; sending a canary literally would
    plant it in the very journal we check. The base64 form is not the canary's bytes.
    """
    encoded = base64.b64encode(value.encode()).decode()
    return f"$(printf %s {shlex.quote(encoded)} | base64 -d)"


def port_list(raw: str, option: str) -> set[int]:
    try:
        return {int(p) for p in raw.split(",") if p.strip()}
    except ValueError:
        raise pytest.UsageError(f"{option}: expected comma-separated port numbers, got {raw!r}") from None


class ArtifactView:
    """A disk image file (qcow2 or raw, whole-disk ext4 or partitioned) seen from the test host."""

    def __init__(self, path: Path, workdir: Path) -> None:
        self.path = path
        self.workdir = workdir
        self._raw: Path | None = None
        self._fs_spec: str | None = None
        self.info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True, text=True
            ).stdout
        )

    def close(self) -> None:
        if self._raw is not None and self._raw != self.path:
            with contextlib.suppress(OSError):
                self._raw.unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- bytes -----------------------------------------------------------------------------------------------
    def _needs_flattening(self) -> bool:
        if self.info.get("format") == "raw":
            return False
        if self.info.get("backing-filename"):
            return True  # part of the content lives in another file
        check = subprocess.run(["qemu-img", "check", "--output=json", str(self.path)], capture_output=True, text=True)
        try:
            compressed = json.loads(check.stdout).get("compressed-clusters", 0)
        except ValueError:
            return True
        return compressed > 0  # compressed clusters hide their bytes from a plain scan

    def raw(self) -> Path:
        """The image as a raw (sparse) file: the artifact itself if raw, else a private conversion."""
        if self._raw is None:
            if self.info.get("format") == "raw":
                self._raw = self.path
            else:
                target = self.workdir / "artifact.raw"
                subprocess.run(
                    ["qemu-img", "convert", "-O", "raw", str(self.path), str(target)],
                    check=True,
                    capture_output=True,
                )
                self._raw = target
        return self._raw

    def scan_target(self) -> Path:
        """What to stream for a byte scan: the artifact file itself, unless its bytes are not all in it."""
        return self.raw() if self._needs_flattening() else self.path

    def find(self, needles: dict[str, bytes]) -> dict[str, list[int]]:
        """Offsets (in the scanned file) where each needle occurs; streams the file, skips sparse holes."""
        target = self.scan_target()
        hits: dict[str, list[int]] = {name: [] for name in needles}
        overlap = max(len(n) for n in needles.values()) - 1
        with open(target, "rb") as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size
            for start, end in _data_segments(fd, size):
                f.seek(start)
                pos, carry = start, b""
                while pos < end:
                    block = f.read(min(CHUNK, end - pos))
                    if not block:
                        break
                    buf = carry + block
                    base = pos - len(carry)
                    for name, needle in needles.items():
                        i = buf.find(needle)
                        while i != -1:
                            if base + i not in hits[name]:
                                hits[name].append(base + i)
                            i = buf.find(needle, i + 1)
                    carry = buf[-overlap:] if overlap else b""
                    pos += len(block)
        return hits

    # ---- files in the root filesystem (debugfs reads ext4 without mounting) -------------------------------
    def _fs(self) -> str:
        if self._fs_spec is None:
            raw = self.raw()
            candidates = [str(raw)]
            parts = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True)
            if parts.returncode == 0:
                table = json.loads(parts.stdout)["partitiontable"]
                sector = table.get("sectorsize", 512)
                for p in sorted(table.get("partitions", []), key=lambda p: -p["size"]):
                    candidates.append(f"{raw}?offset={p['start'] * sector}")
            for spec in candidates:
                probe = subprocess.run(["debugfs", "-R", "stat /etc", spec], capture_output=True, text=True)
                if probe.returncode == 0 and "Inode:" in probe.stdout:
                    self._fs_spec = spec
                    break
            else:
                raise RuntimeError(f"{self.path}: no ext2/3/4 root filesystem found (whole disk or partition)")
        return self._fs_spec

    def read(self, path: str) -> bytes | None:
        """Contents of ``path`` in the image's root filesystem, or None if it does not exist."""
        out = subprocess.run(["debugfs", "-R", f"cat {path}", self._fs()], capture_output=True)
        if b"File not found" in out.stderr or out.returncode != 0:
            return None
        return out.stdout

    def listdir(self, path: str) -> list[str]:
        """Names in directory ``path`` of the image's root filesystem (empty if missing)."""
        out = subprocess.run(["debugfs", "-R", f"ls -p {path}", self._fs()], capture_output=True, text=True)
        names = []
        for line in out.stdout.splitlines():
            fields = line.strip("/").split("/")
            if len(fields) >= 5 and fields[4] not in (".", ".."):
                names.append(fields[4])
        return names


def _data_segments(fd: int, size: int):
    """(start, end) ranges holding data; the whole file if the filesystem cannot report holes."""
    pos = 0
    try:
        while pos < size:
            start = os.lseek(fd, pos, os.SEEK_DATA)
            end = os.lseek(fd, start, os.SEEK_HOLE)
            yield start, end
            pos = end
    except OSError as e:
        if e.errno == 6:  # ENXIO: no data after pos
            return
        if pos == 0:
            yield 0, size
            return
        raise
