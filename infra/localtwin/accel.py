"""Which accelerator the local twin's QEMU uses: KVM where it really boots the twin's kernel, else TCG (software
emulation). GitHub's Linux runners offer KVM; the development machines have a /dev/kvm that does not work.

``/dev/kvm`` being there, opening, even running a one-instruction real-mode guest proves little: on the
development machines the host's nested hypervisor (PVM) creates VMs and runs real-mode code, but the Debian kernel
hangs for good where it switches to long mode ("Probing EDD ... ok", then nothing), so a QEMU started with
``-accel kvm`` would hang silently. The probe therefore boots the very kernel the twin boots, under KVM, with no
disk and a serial console, and KVM counts as usable when the kernel prints its banner ("Linux version") within a
few seconds (under KVM it does in well under one). It runs only when a VM is about to start (a no-op rebuild never
pays for it), once per process.

``NCIMAGE_ACCEL=tcg|kvm`` forces the choice (``kvm`` is still probed: asking for it where it hangs is refused).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

PROBE_TIMEOUT_S = 10.0
BANNER = b"Linux version"


@dataclass(frozen=True)
class Accelerator:
    name: str  # "kvm" or "tcg": QEMU's -accel value and Packer's qemu `accelerator`
    reason: str

    @property
    def cpu(self) -> str:
        """The -cpu model: the host's own under KVM, QEMU's emulated maximum under TCG."""
        return "host" if self.name == "kvm" else "max"

    def describe(self) -> str:
        return f"accelerator: {self.name} ({self.reason})"


def probe_kvm(kernel: Path, timeout_s: float = PROBE_TIMEOUT_S, device: str = "/dev/kvm") -> tuple[bool, str]:
    """(usable, why): boot ``kernel`` under KVM until it prints its banner, or give up after ``timeout_s``."""
    if not os.path.exists(device):
        return False, f"no {device}"
    if not os.access(device, os.R_OK | os.W_OK):
        return False, f"{device} is not readable and writable by this user"
    cmd = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults", "-display", "none",
           "-monitor", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel),
           "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except FileNotFoundError:
        return False, "qemu-system-x86_64 is not installed"
    seen = b""
    try:
        assert proc.stdout is not None
        while time.monotonic() - started < timeout_s:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                seen += chunk
                if BANNER in seen:
                    return True, f"KVM booted the twin's kernel to its banner in {time.monotonic() - started:.1f} s"
            elif proc.poll() is not None:
                break
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
    if proc.returncode not in (None, -9) and err:
        return False, f"qemu -accel kvm failed: {err.decode(errors='replace').strip().splitlines()[-1]}"
    return False, f"/dev/kvm is there, but the twin's kernel printed nothing under KVM in {timeout_s:.0f} s"


@lru_cache(maxsize=4)
def choose_accelerator(kernel: Path) -> Accelerator:
    """KVM when it boots ``kernel``, else TCG; ``NCIMAGE_ACCEL`` forces one. Probed once per process and kernel."""
    forced = os.environ.get("NCIMAGE_ACCEL", "").strip().lower()
    if forced not in ("", "kvm", "tcg"):
        raise ValueError(f"NCIMAGE_ACCEL={forced!r}: use kvm or tcg (or unset it to probe)")
    if forced == "tcg":
        return Accelerator("tcg", "NCIMAGE_ACCEL=tcg")
    usable, why = probe_kvm(kernel)
    if forced == "kvm" and not usable:
        raise ValueError(f"NCIMAGE_ACCEL=kvm, but KVM is not usable here: {why}; unset it to fall back to TCG")
    return Accelerator("kvm", why) if usable else Accelerator("tcg", f"software emulation; {why}")
