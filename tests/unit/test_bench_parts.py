"""The benchmark's machinery, without booting a VM: the footprint's parsing, the bake's steps, the process-tree
proof (psutil), the seed-style script and its user data, the loopback server, the floor disk, the no-op check."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from infra.bench import BenchError, procwatch, rebuild, seed
from infra.bench.boots import BootTarget
from infra.bench.floor import FLOOR_FILES, floor_disk
from infra.bench.footprint import filesystem_usage, parse_dumpe2fs
from infra.bench.inputs import Inputs
from infra.bench.serve import loopback_http_server

ROOT = Path(__file__).resolve().parents[2]


# ---- dumpe2fs / footprint -----------------------------------------------------------------------------------
DUMPE2FS_SAMPLE = """\
Filesystem volume name:   root
Filesystem UUID:          0b0f3a1e-1d7d-4d6c-9a7e-0a3c4e9b1f00
Block count:              1572864
Reserved block count:     78643
Free blocks:              1048576
Free inodes:              380000
Block size:               4096
Fragment size:            4096
"""


def test_parse_dumpe2fs_used_bytes():
    fs = parse_dumpe2fs(DUMPE2FS_SAMPLE)
    assert fs["block_size"] == 4096
    assert fs["size_bytes"] == 1572864 * 4096
    assert fs["used_bytes"] == (1572864 - 1048576) * 4096  # 2 GiB


def test_parse_dumpe2fs_rejects_output_without_block_counts():
    with pytest.raises(BenchError, match="no 'Free blocks:' line"):
        parse_dumpe2fs("Block count: 10\nBlock size: 4096\n")


@pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("qemu-img")), reason="needs e2fsprogs, qemu-img")
def test_filesystem_usage_of_a_real_qcow2_grows_with_its_content(tmp_path):
    def qcow2_with(payload_bytes: int, name: str) -> Path:
        tree = tmp_path / f"tree-{name}"
        tree.mkdir()
        (tree / "payload").write_bytes(os.urandom(payload_bytes))
        raw = tmp_path / f"{name}.raw"
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(raw), "64M"], check=True)
        q = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(q)], check=True)
        return q

    small = filesystem_usage(qcow2_with(1 << 20, "small"), tmp_path)
    big = filesystem_usage(qcow2_with(20 << 20, "big"), tmp_path)
    assert small["size_bytes"] == 64 << 20
    assert big["used_bytes"] - small["used_bytes"] >= 19 << 20
    assert not list(tmp_path.glob("footprint.raw")), "the temporary raw image must be removed"


# ---- bake breakdown -----------------------------------------------------------------------------------------
PACKER_TIMINGS = {
    "only": "qemu.nextcloud", "exit_code": 0, "total_seconds": 330.0, "provisioning_seconds": 250.0,
    "packer_run_uuid": "run-1",
    "steps": [
        {"name": "Starting VM, booting from CD-ROM", "kind": "builder", "started_s": 1.0, "seconds": 70.0},
        {"name": "shell: install-docker.sh", "kind": "provisioner", "started_s": 71.0, "seconds": 120.0},
        {"name": "shell: build-nextcloud-image.sh", "kind": "provisioner", "started_s": 191.0, "seconds": 130.0},
        {"name": "Gracefully halting virtual machine...", "kind": "builder", "started_s": 321.0, "seconds": 10.0},
    ],
}


def test_bake_breakdown_lists_provisioners_and_sums_by_kind():
    b = rebuild.bake_breakdown(PACKER_TIMINGS)
    assert [(s["name"], s["seconds"]) for s in b["provisioners"]] == [
        ("shell: install-docker.sh", 120.0), ("shell: build-nextcloud-image.sh", 130.0)]
    assert b["by_kind"] == {"builder": 80.0, "provisioner": 250.0}


def test_bake_steps_refuse_a_timings_file_of_another_packer_run(tmp_path):
    path = tmp_path / "packer-timings.json"
    path.write_text(json.dumps({**PACKER_TIMINGS, "packer_run_uuid": "", "exit_code": 1}))
    out = rebuild.measure_bake_steps({"timings": {"packer_steps": str(path)}, "packer_run_uuid": "run-1"})
    assert "a later bake overwrote it" in out["error"] and out["provisioners"] == []
    path.write_text(json.dumps(PACKER_TIMINGS))
    out = rebuild.measure_bake_steps({"timings": {"packer_steps": str(path)}, "packer_run_uuid": "run-1"})
    assert "error" not in out and len(out["provisioners"]) == 2


def test_full_bake_comes_from_the_artifacts_record():
    rec = {"built_at": "2026-11-26T16:40:00Z", "timings": {"total_seconds": 412.3, "bake_seconds": 390.0}}
    out = rebuild.full_bake_from_record(rec)
    assert out["value"] == 412.3 and out["packer_seconds"] == 390.0 and "16:40" in out["source"]
    assert rebuild.full_bake_from_record({})["value"] is None


# ---- no VM started: the process-tree proof (psutil) -----------------------------------------------------------
def test_process_tree_watch_sees_a_short_lived_child():
    r = procwatch.watch_process_tree(["sh", "-c", "sleep 2; echo done"], ROOT)
    assert r["exit_code"] == 0 and "done" in r["output"]
    assert "sleep" in r["process_names"]
    assert r["qemu_seen"] is False and r["packer_seen"] is False
    assert r["seconds"] >= 2 and r["scans"] > 10


def _fake_qemu(tmp_path: Path) -> Path:
    fake = tmp_path / "qemu-system-x86_64"  # argv[0] is what counts, not the binary behind it
    fake.symlink_to(shutil.which("sleep"))
    return fake


def test_process_tree_watch_would_catch_a_qemu(tmp_path):
    # (2 s: a scan can take a few hundred ms on a loaded machine; a real VM lives for minutes.)
    r = procwatch.watch_process_tree(["sh", "-c", f"{_fake_qemu(tmp_path)} 2"], ROOT)
    assert r["qemu_seen"] is True and "qemu-system-x86_64" in r["process_names"]


def test_a_bake_starting_under_the_noop_command_is_stopped_at_once(tmp_path):
    r = procwatch.watch_process_tree(["sh", "-c", f"{_fake_qemu(tmp_path)} 60"], ROOT, forbid=procwatch.is_bake)
    assert r["stopped"] == "stopped: qemu-system-x86_64 started"
    assert r["seconds"] < 30 and r["exit_code"] != 0


def test_the_tree_holds_the_whole_descent_and_other_vms_are_found(tmp_path):
    child = subprocess.Popen(["sh", "-c", f"sh -c '{_fake_qemu(tmp_path)} 30'; true"])
    try:
        deadline = 50
        while deadline and "qemu-system-x86_64" not in procwatch.tree(child.pid).values():
            deadline -= 1
            subprocess.run(["sleep", "0.1"], check=True)
        names = procwatch.tree(child.pid)
        assert names[child.pid] == "sh" and "qemu-system-x86_64" in names.values(), names
        qemu = next(pid for pid, name in names.items() if name == "qemu-system-x86_64")
        assert qemu in procwatch.qemu_pids()
        procwatch.stop_tree(child.pid, grace_s=5)
        assert qemu not in procwatch.qemu_pids(), "the VM below the command is stopped"
        child.wait(timeout=10)  # and the command itself ended (a TimeoutExpired here fails the test)
    finally:
        child.kill()
    assert procwatch.tree(child.pid) == {}, "a process that is gone has no tree"
    assert procwatch.is_bake("packer") and procwatch.is_bake("qemu-system-aarch64") and not procwatch.is_bake("sh")


# ---- the seed-style setup ---------------------------------------------------------------------------------------
BASE_UD = (
    "#cloud-config\nwrite_files:\n  - path: /etc/nextcloud/instance.json\n    permissions: '0600'\n"
    "    content: '{\"schema\": 1}'\n"
)


def test_seed_user_data_keeps_the_rendered_user_data_and_runs_the_setup():
    ref = "10.0.2.2:55000/nextcloud-standin:29.0.7-apache@sha256:" + "c" * 64
    ud = seed.seed_user_data(BASE_UD, "http://10.0.2.2:8000", ref, "ab" * 32, "docker.io=1.0-1", "10.0.2.2:55000")
    assert ud.startswith("#cloud-config\n")
    data = yaml.safe_load(ud)
    paths = [f["path"] for f in data["write_files"]]
    assert paths == ["/etc/nextcloud/instance.json", seed.SEED_SCRIPT_PATH]
    assert data["runcmd"] == [[seed.SEED_SCRIPT_PATH, "http://10.0.2.2:8000", ref, "ab" * 32, "docker.io=1.0-1",
                               "10.0.2.2:55000"]]
    assert data["write_files"][1]["content"] == (ROOT / "infra" / "bench" / "seed-style.sh").read_text()


def test_the_seed_style_script_does_the_original_setups_steps_with_the_bakes_scripts():
    script = seed.seed_script()
    assert script.startswith("#!/usr/bin/env bash\n") and "set -o errexit -o nounset -o pipefail" in script
    for step in ("apt_update_upgrade", "install-docker.sh", "cache-nextcloud-image.sh", "build-nextcloud-image.sh",
                 "install-units.sh", "systemctl start --no-block nextcloud.service"):
        assert step in script
    for name in set(re.findall(r"scripts/([a-z-]+\.sh)", script)):
        assert (ROOT / "image" / "scripts" / name).is_file(), name
    assert seed.TIMINGS_PATH in script


def test_the_seed_style_script_refuses_a_wrong_argument_count():
    r = subprocess.run(["bash", str(seed.SEED_SCRIPT), "http://x", "image"], capture_output=True, text=True)
    assert r.returncode == 2 and "usage:" in r.stderr and "got 2 arguments" in r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
def test_the_seed_style_script_is_shellcheck_clean():
    r = subprocess.run(["shellcheck", str(seed.SEED_SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs cloud-init (Debian package)")
def test_seed_user_data_is_valid_cloud_config(tmp_path):
    f = tmp_path / "ud.yaml"
    f.write_text(seed.seed_user_data(BASE_UD, "http://10.0.2.2:8000", "x:y", "ab" * 32))
    r = subprocess.run(["cloud-init", "schema", "-c", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_seed_step_timings_are_read_as_seconds_per_step():
    text = "apt_update_upgrade\t61234\nfetch_image_sources\t850\ngarbage\nstart_nextcloud\t\n"
    assert seed.parse_step_timings(text) == {"apt_update_upgrade": 61.2, "fetch_image_sources": 0.8}


def test_image_sources_tarball_holds_scripts_and_context():
    with tarfile.open(fileobj=io.BytesIO(seed.image_sources_tarball(ROOT / "image"))) as tar:
        names = tar.getnames()
    assert "scripts/install-docker.sh" in names and "nextcloud/Dockerfile" in names
    assert "rootfs/etc/systemd/system/nextcloud.service" in names
    assert "scripts/lib/apt-pins.sh" in names
    assert not [n for n in names if "__pycache__" in n]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read()


def test_loopback_http_server_serves_the_directory_and_stops(tmp_path):
    (tmp_path / "nextcloud.env").write_text("NEXTCLOUD_DB_HOST=10.0.2.2\n")
    with loopback_http_server(tmp_path) as port:
        assert _get(f"http://127.0.0.1:{port}/nextcloud.env") == b"NEXTCLOUD_DB_HOST=10.0.2.2\n"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nextcloud.env", timeout=2)


# ---- the floor --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("debugfs") is None, reason="needs e2fsprogs")
def test_the_floor_is_the_base_disk_with_the_images_product_independent_boot_settings(tmp_path):
    # A small ext4 "base disk"; the floor gets exactly the image's files for FLOOR_FILES, the base stays untouched.
    tree = tmp_path / "tree"
    (tree / "etc" / "cloud" / "cloud.cfg.d").mkdir(parents=True)
    (tree / "etc" / "systemd").mkdir(parents=True)
    base = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "32M", str(base)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-d", str(tree), str(base)], check=True)
    before = base.read_bytes()
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "image" / "rootfs", root / "image" / "rootfs")
    target = BootTarget(base, tmp_path / "vmlinuz", tmp_path / "initrd.img")
    floor = floor_disk(root, target, log=lambda _m: None)
    assert floor.disk != base and base.read_bytes() == before
    for rel in FLOOR_FILES:
        out = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(floor.disk)], capture_output=True, text=True)
        assert out.stdout == (ROOT / "image" / "rootfs" / rel).read_text(), rel
        stat = subprocess.run(["debugfs", "-R", f"stat /{rel}", str(floor.disk)], capture_output=True, text=True)
        assert "Mode:  0644" in stat.stdout and "User:     0" in stat.stdout, stat.stdout[:300]
    assert "ssh_genkeytypes: [ed25519, ecdsa]" in (ROOT / "image" / "rootfs" / FLOOR_FILES[0]).read_text()
    assert floor_disk(root, target, log=lambda _m: None).disk == floor.disk, "cached by content"


# ---- the no-op rebuild's precondition ---------------------------------------------------------------------------
def test_noop_is_refused_when_a_rebuild_would_bake(tmp_path, monkeypatch):
    # A real reuse record as the bake driver writes it, under the fingerprint the real render gives (in a copy of
    # the repository's image/ and packer/); then the resolved base disk changes and the rebuild would bake.
    # resolve_local_inputs stands in for the cached base disk and stand-in image (minutes to build).
    import hashlib

    from infra.localtwin import build
    from render.outputs import ResolvedInputs
    from render.settings import load_settings

    for tree in ("image", "packer"):
        shutil.copytree(ROOT / tree, tmp_path / tree, ignore=shutil.ignore_patterns("__pycache__"))
    resolved = {"id": "sha256:" + "1" * 64}

    def fake_resolve(_settings, log=print):
        ref = "10.0.2.2:55000/nextcloud-standin:29.0.7-apache@sha256:" + "2" * 64
        return ResolvedInputs(resolved["id"], "local-debian-12-base:x", ref), None, None

    monkeypatch.setattr(build, "resolve_local_inputs", fake_resolve)
    settings = load_settings(ROOT, "local", environ={}).settings
    build_dir = tmp_path / "build" / "local"
    fp = build.current_fingerprint(tmp_path, settings, build_dir)
    art = build_dir / "artifacts" / fp
    art.mkdir(parents=True)
    files = {name: art / name for name in ("nextcloud.qcow2", "vmlinuz", "initrd.img")}
    for p in files.values():
        p.write_bytes(b"x")
    (art / "artifact.json").write_text(json.dumps({
        "artifact_id": str(files["nextcloud.qcow2"]), "kernel": str(files["vmlinuz"]),
        "initrd": str(files["initrd.img"]), "sha256": hashlib.sha256(b"x").hexdigest(), "fingerprint": fp}))
    inputs = Inputs(root=tmp_path, settings=settings, artifact=None, artifact_record={}, base=None, fingerprint=fp)
    assert rebuild.noop_precondition(inputs) is None
    resolved["id"] = "sha256:" + "3" * 64
    assert "would bake, not reuse" in rebuild.noop_precondition(inputs)
