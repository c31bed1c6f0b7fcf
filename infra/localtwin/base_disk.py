"""The local twin's "source AMI": a Debian 12 cloud-style disk built with mmdebstrap.

The disk is what Packer's qemu source starts from, the way amazon-ebs starts from Debian's
EC2 image: cloud-init (NoCloud), default user ``admin`` with key-only SSH and passwordless
sudo, no SSH host keys, empty machine-id. It is built once and cached under
``build/cache/base/<key>/`` where ``key`` hashes every input, so editing the package list
or the customize hook builds a new disk and unchanged inputs never rebuild.

Usage::

    from infra.localtwin.base_disk import ensure_base_disk
    base = ensure_base_disk()          # BaseDisk(disk=..., kernel=..., initrd=..., key=...)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from infra.localtwin.cachelock import cache_lock

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / "build" / "cache" / "base"
CUSTOMIZE_HOOK = Path(__file__).with_name("customize-base-disk.sh")

RELEASE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What a Debian cloud image has that the bake and a booted instance rely on (LOCAL-TWIN.md).
PACKAGES = (
    "systemd-sysv", "dbus", "udev", "linux-image-cloud-amd64", "initramfs-tools",
    "openssh-server", "cloud-init", "ifupdown", "isc-dhcp-client", "sudo", "e2fsprogs",
    "procps", "iproute2", "netbase", "ca-certificates", "python3", "curl", "gnupg",
)
# Small like Debian's cloud images: the bake resizes the disk to root_volume_size_gb and cloud-init
# grows the filesystem at boot (a volume smaller than its source would fail, as on EC2).
DISK_SIZE = "3G"
# Bump when the layout of the cache entry changes (2: base.json records the disk's digest).
FORMAT = 2

Log = Callable[[str], None]


@dataclass(frozen=True)
class BaseDisk:
    """A cached base disk: raw ext4 root filesystem (label ``root``) plus the kernel and initrd to boot it."""

    disk: Path
    kernel: Path
    initrd: Path
    key: str
    digest: str = ""  # sha256:<hex> of disk.raw, recorded when it was built: the twin's "source AMI id"

    @property
    def label(self) -> str:
        """Name recorded beside the digest as the artifact's base image (the stand-in for a source AMI name)."""
        return f"local-debian-12-base:{self.key[:12]}"


def base_disk_inputs() -> dict:
    """Everything that determines the disk's content; its hash is the cache key."""
    return {
        "format": FORMAT,
        "release": RELEASE,
        "mirror": MIRROR,
        "security_mirror": SECURITY_MIRROR,
        "packages": sorted(PACKAGES),
        "disk_size": DISK_SIZE,
        "customize_hook": CUSTOMIZE_HOOK.read_text(),
    }


def base_disk_key() -> str:
    """sha256 over :func:`base_disk_inputs`, stable across runs and machines."""
    blob = json.dumps(base_disk_inputs(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _entry(cache: Path, key: str) -> BaseDisk:
    d = cache / key
    try:
        digest = str(json.loads((d / "base.json").read_text()).get("digest") or "")
    except (OSError, ValueError):
        digest = ""
    return BaseDisk(disk=d / "disk.raw", kernel=d / "vmlinuz", initrd=d / "initrd.img", key=key, digest=digest)


def cached_base_disk(cache: Path = DEFAULT_CACHE) -> BaseDisk | None:
    """The cached disk for the current inputs, or None when it has not been built."""
    base = _entry(cache, base_disk_key())
    if base.digest.startswith("sha256:") and all(p.is_file() for p in (base.disk, base.kernel, base.initrd)):
        return base
    return None


def file_digest(path: Path) -> str:
    """``sha256:<hex>`` of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def _require_tools() -> None:
    missing = [t for t in ("mmdebstrap", "mkfs.ext4") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(
            f"base disk: {', '.join(missing)} not found; install with `apt-get install mmdebstrap e2fsprogs`"
        )
    if os.geteuid() != 0:
        raise RuntimeError("base disk: mmdebstrap must run as root to build a bootable root filesystem")


def _run(cmd: list[str], log: Log) -> None:
    log("  $ " + " ".join(cmd[:6]) + (" ..." if len(cmd) > 6 else ""))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise RuntimeError(f"base disk: {cmd[0]} failed (exit {proc.returncode}):\n{tail}")


def build_base_disk(cache: Path = DEFAULT_CACHE, log: Log = print) -> BaseDisk:
    """Build the disk for the current inputs (unconditionally) and return it.

    Builds in a temporary directory beside the cache entry and renames it into place, so
    an interrupted build never leaves a half-written entry that looks valid.
    """
    _require_tools()
    key = base_disk_key()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    rootdir = tmp / "rootfs"
    tmp.mkdir()
    started = time.monotonic()
    try:
        _run(
            [
                "mmdebstrap", "--variant=minbase", "--mode=root", "--format=directory",
                "--components=main", "--include=" + ",".join(sorted(PACKAGES)),
                f"--customize-hook={CUSTOMIZE_HOOK} \"$1\"",
                RELEASE, str(rootdir),
                f"deb {MIRROR} {RELEASE} main",
                f"deb {MIRROR} {RELEASE}-updates main",
                f"deb {SECURITY_MIRROR} {RELEASE}-security main",
            ],
            log,
        )
        kernels = sorted(rootdir.glob("boot/vmlinuz-*"))
        initrds = sorted(rootdir.glob("boot/initrd.img-*"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise RuntimeError(f"base disk: expected one kernel and one initrd in /boot, got {kernels} {initrds}")
        shutil.copyfile(kernels[0], tmp / "vmlinuz")
        shutil.copyfile(initrds[0], tmp / "initrd.img")
        disk = tmp / "disk.raw"
        _run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(rootdir), str(disk), DISK_SIZE], log)
        shutil.rmtree(rootdir)
        info = {
            "key": key,
            # Computed once here: the cache entry is never modified, so later bakes trust it (as an AMI id).
            "digest": file_digest(disk),
            "inputs": {k: v for k, v in base_disk_inputs().items() if k != "customize_hook"},
            "kernel_release": kernels[0].name.removeprefix("vmlinuz-"),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (tmp / "base.json").write_text(json.dumps(info, indent=2) + "\n")
        final = cache / key
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _entry(cache, key)


def ensure_base_disk(cache: Path = DEFAULT_CACHE, log: Log = print) -> BaseDisk:
    """Return the cached base disk, building it first only when it is missing."""
    base = cached_base_disk(cache)
    if base is None:
        with cache_lock(cache, "base disk", log):
            base = cached_base_disk(cache)  # built by the process this one waited for
            if base is None:
                log(f"base disk: building {RELEASE} with mmdebstrap (about 1.5 min) ...")
                started = time.monotonic()
                base = build_base_disk(cache, log)
                log(f"base disk: built {base.disk} in {time.monotonic() - started:.0f}s")
                return base
    log(f"base disk: reusing {base.disk.parent}")
    return base


def main() -> int:
    """``python -m infra.localtwin.base_disk``: build (or reuse) the base disk, print its paths as JSON."""
    try:
        base = ensure_base_disk(log=lambda m: print(m, file=sys.stderr))
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) for k, v in asdict(base).items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
