"""The twin's accelerator choice: KVM only where it really boots the kernel, TCG otherwise, and it says why.

QEMU is replaced by small scripts that stand in for it on hosts this machine is not: one where KVM boots the
kernel (it prints the kernel's banner, as the real serial console does), one where the guest hangs after the
decompressor (what this machine's nested hypervisor does), one where QEMU refuses KVM.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.localtwin import accel


def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "qemu-system-x86_64"
    script.write_text("#!/usr/bin/env bash\n" + body + "\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    calls = tmp_path / "calls"
    monkeypatch.setenv("FAKE_QEMU_CALLS", str(calls))
    return calls


@pytest.fixture
def device(tmp_path: Path) -> str:
    dev = tmp_path / "kvm"
    dev.write_text("")
    return str(dev)


def test_kvm_is_chosen_when_the_kernel_boots_under_it(tmp_path, monkeypatch, device):
    calls = fake_qemu(tmp_path, monkeypatch, 'echo "$*" > "$FAKE_QEMU_CALLS"; '
                      'echo "Probing EDD (edd=off to disable)... ok"; echo "[    0.000000] Linux version 6.1.0"; '
                      "sleep 30")
    usable, why = accel.probe_kvm(tmp_path / "vmlinuz", timeout_s=5, device=device)
    assert usable and "banner" in why
    args = calls.read_text()
    assert "-accel kvm" in args and f"-kernel {tmp_path / 'vmlinuz'}" in args


def test_a_guest_that_hangs_under_kvm_means_tcg_with_the_reason(tmp_path, monkeypatch, device):
    fake_qemu(tmp_path, monkeypatch, 'echo "Probing EDD (edd=off to disable)... ok"; sleep 30')
    usable, why = accel.probe_kvm(tmp_path / "vmlinuz", timeout_s=1, device=device)
    assert not usable and "printed nothing under KVM in 1 s" in why


def test_qemu_refusing_kvm_means_tcg_with_its_message(tmp_path, monkeypatch, device):
    fake_qemu(tmp_path, monkeypatch, 'echo "qemu-system-x86_64: failed to initialize kvm: Permission denied" >&2; '
              "exit 1")
    usable, why = accel.probe_kvm(tmp_path / "vmlinuz", timeout_s=5, device=device)
    assert not usable and "failed to initialize kvm" in why


def test_no_device_means_tcg_without_starting_qemu(tmp_path, monkeypatch):
    calls = fake_qemu(tmp_path, monkeypatch, 'echo x > "$FAKE_QEMU_CALLS"')
    usable, why = accel.probe_kvm(tmp_path / "vmlinuz", device=str(tmp_path / "absent"))
    assert not usable and "no " in why and not calls.exists()


def test_the_variable_forces_tcg_without_a_probe_and_refuses_kvm_that_does_not_work(tmp_path, monkeypatch):
    calls = fake_qemu(tmp_path, monkeypatch, 'echo x > "$FAKE_QEMU_CALLS"; sleep 30')
    accel.choose_accelerator.cache_clear()
    monkeypatch.setenv("NCIMAGE_ACCEL", "tcg")
    chosen = accel.choose_accelerator(tmp_path / "vmlinuz")
    assert (chosen.name, chosen.cpu) == ("tcg", "max") and not calls.exists()
    accel.choose_accelerator.cache_clear()
    monkeypatch.setenv("NCIMAGE_ACCEL", "kvm")
    monkeypatch.setattr(accel, "probe_kvm", lambda kernel: (False, "it hangs"))
    with pytest.raises(ValueError, match="NCIMAGE_ACCEL=kvm, but KVM is not usable here: it hangs"):
        accel.choose_accelerator(tmp_path / "vmlinuz")
    accel.choose_accelerator.cache_clear()
    monkeypatch.setenv("NCIMAGE_ACCEL", "sometimes")
    with pytest.raises(ValueError, match="use kvm or tcg"):
        accel.choose_accelerator(tmp_path / "vmlinuz")
    accel.choose_accelerator.cache_clear()
