"""The benchmark's own logic, without booting a VM: statistics, targets, parsing, proofs, the result document."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from infra import bench

ROOT = Path(__file__).resolve().parents[2]


# ---- statistics and targets ---------------------------------------------------------------------------------
def test_summarize_gives_median_and_spread_of_raw_samples():
    assert bench.summarize([80.0, 70.5, 75.0]) == {"n": 3, "median": 75.0, "min": 70.5, "max": 80.0, "spread": 9.5}
    assert bench.summarize([10, 20])["median"] == 15.0  # even count: mean of the middle two
    assert bench.summarize([]) == {"n": 0, "median": None, "min": None, "max": None, "spread": None}


@pytest.mark.parametrize(
    ("num", "den", "expected"),
    [(115.0, 100.0, 1.15), (None, 100.0, None), (5.0, None, None), (5.0, 0.0, None), (1.0, 3.0, 0.33)],
)
def test_ratio(num, den, expected):
    assert bench.ratio(num, den) == expected


def _timing(*samples: float) -> dict:
    return {"samples": list(samples), "stats": bench.summarize(samples)}


def test_targets_met_and_missed_are_told_apart():
    m = {
        "boot_bare_s": _timing(70, 72, 74),
        "boot_baked_ready_s": _timing(100, 104, 110),  # 104 / 72 = 1.44 > 1.15: missed
        "boot_seed_ready_s": _timing(600, 640, 700),  # 640 / 104 = 6.15 >= 5: met
        "noop_rebuild_s": _timing(1.2, 1.4, 1.3),
        "footprint": {"image_used_bytes": 3_200_000_000},  # 3.2 GB > 3 GB: missed
    }
    targets = {t["name"]: t for t in bench.evaluate_targets(m)}
    assert targets["baked_vs_bare"]["value"] == 1.44 and targets["baked_vs_bare"]["met"] is False
    assert targets["seed_vs_baked"]["value"] == 6.15 and targets["seed_vs_baked"]["met"] is True
    assert targets["noop_rebuild"]["value"] == 1.3 and targets["noop_rebuild"]["met"] is True
    assert targets["footprint"]["value"] == 3.2 and targets["footprint"]["met"] is False
    assert bench.compute_ratios(m) == {"baked_vs_bare": 1.44, "seed_vs_bare": 8.89, "seed_vs_baked": 6.15}


def test_targets_not_measured_are_neither_met_nor_missed():
    targets = bench.evaluate_targets({"boot_bare_s": _timing(70)})
    assert [t["met"] for t in targets] == [None, None, None, None]
    assert all(t["value"] is None for t in targets)


def test_target_boundaries_are_inclusive():
    m = {"boot_bare_s": _timing(100), "boot_baked_ready_s": _timing(115), "boot_seed_ready_s": _timing(575),
         "noop_rebuild_s": _timing(5.0), "footprint": {"image_used_bytes": 3 * 10**9}}
    assert all(t["met"] is True for t in bench.evaluate_targets(m))


# ---- choosing measurements ----------------------------------------------------------------------------------
def test_bare_and_baked_boots_take_turns(monkeypatch):
    # The boot itself is QEMU (integration suite); here only the order and the bookkeeping around it. A slow
    # phase of the machine must fall on both sides of the ratio, not on whichever kind happened to run then.
    order: list[tuple[str, int]] = []

    def boot(kind, target, user_data, until, *, run, runs, timeout_s, log, after=None, quiet_wait_s=0):
        order.append((kind, run))
        if (kind, run) == ("baked", 2):
            raise bench.BenchError("readiness not reached")
        value = {"bare": 30.0, "baked": 33.0}[kind] + run
        return {"ssh_login_s": value, "ready_s": value} if until == "ssh" else {"ready_s": value}

    monkeypatch.setattr(bench, "_boot_once", boot)

    def make(n):
        return ("disk", "ud", None)

    bare, baked = bench._measure_alternating([("bare", make, "ssh"), ("baked", make, "ready")], 3, 60, lambda _: None)
    assert order == [("bare", 1), ("baked", 1), ("bare", 2), ("baked", 2), ("bare", 3), ("baked", 3)]
    assert bare["samples"] == [31.0, 32.0, 33.0] and bare["stats"]["median"] == 32.0
    assert baked["samples"] == [34.0, 36.0] and baked["error"] == "run 2: readiness not reached"
    assert [d["turn"] for d in baked["details"]] == [1, 3]
    assert bare["alternated_with"] == ["baked"] and bare["until"] == "SSH key login"


def test_select_measurements_accepts_names_keys_and_comma_lists_in_run_order():
    assert bench.select_measurements(None) == list(bench.MEASUREMENTS)
    chosen = bench.select_measurements(["seed,footprint,bare", "boot_baked_ready_s"])
    assert chosen == ["bare", "baked", "footprint", "seed"]
    assert bench.select_measurements("baked,bare") == ["bare", "baked"]


def test_select_measurements_names_the_choices_on_a_typo():
    with pytest.raises(bench.BenchError, match=r"unknown measurement .bared.*bare, baked, noop"):
        bench.select_measurements(["bared"])


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
    fs = bench.parse_dumpe2fs(DUMPE2FS_SAMPLE)
    assert fs["block_size"] == 4096
    assert fs["size_bytes"] == 1572864 * 4096
    assert fs["used_bytes"] == (1572864 - 1048576) * 4096  # 2 GiB


def test_parse_dumpe2fs_rejects_output_without_block_counts():
    with pytest.raises(bench.BenchError, match="no 'Free blocks:' line"):
        bench.parse_dumpe2fs("Block count: 10\nBlock size: 4096\n")


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

    small = bench.filesystem_usage(qcow2_with(1 << 20, "small"), tmp_path)
    big = bench.filesystem_usage(qcow2_with(20 << 20, "big"), tmp_path)
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
    b = bench.bake_breakdown(PACKER_TIMINGS)
    assert [(s["name"], s["seconds"]) for s in b["provisioners"]] == [
        ("shell: install-docker.sh", 120.0), ("shell: build-nextcloud-image.sh", 130.0)]
    assert b["by_kind"] == {"builder": 80.0, "provisioner": 250.0}


def test_bake_steps_refuse_a_timings_file_of_another_packer_run(tmp_path):
    path = tmp_path / "packer-timings.json"
    path.write_text(json.dumps({**PACKER_TIMINGS, "packer_run_uuid": "", "exit_code": 1}))
    out = bench.measure_bake_steps({"timings": {"packer_steps": str(path)}, "packer_run_uuid": "run-1"})
    assert "a later bake overwrote it" in out["error"] and out["provisioners"] == []
    path.write_text(json.dumps(PACKER_TIMINGS))
    out = bench.measure_bake_steps({"timings": {"packer_steps": str(path)}, "packer_run_uuid": "run-1"})
    assert "error" not in out and len(out["provisioners"]) == 2


def test_full_bake_comes_from_the_artifacts_record():
    rec = {"built_at": "2026-11-26T16:40:00Z", "timings": {"total_seconds": 412.3, "bake_seconds": 390.0}}
    out = bench.full_bake_from_record(rec)
    assert out["value"] == 412.3 and out["packer_seconds"] == 390.0 and "16:40" in out["source"]
    assert bench.full_bake_from_record({})["value"] is None


# ---- no VM started: the process-tree proof --------------------------------------------------------------------
def test_process_tree_watch_sees_a_short_lived_child():
    r = bench.watch_process_tree(["sh", "-c", "sleep 2; echo done"], ROOT)
    assert r["exit_code"] == 0 and "done" in r["output"]
    assert "sleep" in r["process_names"]
    assert r["qemu_seen"] is False and r["packer_seen"] is False
    assert r["seconds"] >= 2


def test_process_tree_watch_would_catch_a_qemu(tmp_path):
    # A process whose argv[0] is qemu-system-*: the proof must fail when one starts below the command.
    # (2 s: a scan of /proc can take a few hundred ms on a loaded machine; a real VM lives for minutes.)
    fake = tmp_path / "qemu-system-x86_64"
    fake.symlink_to(shutil.which("sleep"))
    r = bench.watch_process_tree(["sh", "-c", f"{fake} 2"], ROOT)
    assert r["qemu_seen"] is True


def test_descendants_walks_the_whole_tree():
    table = {10: (1, "inv"), 11: (10, "python3"), 12: (11, "packer"), 13: (12, "qemu-system-x86_64"), 20: (1, "x")}
    assert bench.descendants(10, table) == {11: "python3", 12: "packer", 13: "qemu-system-x86_64"}
    assert bench.qemu_pids(table) == [13]


# ---- seed-style user data -----------------------------------------------------------------------------------
BASE_UD = (
    "#cloud-config\nwrite_files:\n  - path: /etc/nextcloud/instance.json\n    permissions: '0600'\n"
    "    content: '{\"schema\": 1}'\n"
)


def test_seed_user_data_keeps_the_rendered_user_data_and_runs_the_setup():
    ref = "10.0.2.2:55000/nextcloud-standin:29.0.7-apache@sha256:" + "c" * 64
    ud = bench.seed_user_data(BASE_UD, "http://10.0.2.2:8000", ref, "ab" * 32, "docker.io=1.0-1", "10.0.2.2:55000")
    assert ud.startswith("#cloud-config\n")
    data = yaml.safe_load(ud)
    paths = [f["path"] for f in data["write_files"]]
    assert paths == ["/etc/nextcloud/instance.json", bench.SEED_SCRIPT_PATH]
    assert data["runcmd"] == [[bench.SEED_SCRIPT_PATH, "http://10.0.2.2:8000", ref, "ab" * 32, "docker.io=1.0-1",
                               "10.0.2.2:55000"]]
    script = data["write_files"][1]["content"]
    for step in ("apt_update_upgrade", "install-docker.sh", "cache-nextcloud-image.sh", "build-nextcloud-image.sh",
                 "install-units.sh", "systemctl start --no-block nextcloud.service"):
        assert step in script


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="needs cloud-init (Debian package)")
def test_seed_user_data_is_valid_cloud_config(tmp_path):
    f = tmp_path / "ud.yaml"
    f.write_text(bench.seed_user_data(BASE_UD, "http://10.0.2.2:8000", "x:y", "ab" * 32))
    r = subprocess.run(["cloud-init", "schema", "-c", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="needs shellcheck")
def test_seed_setup_script_is_shellcheck_clean(tmp_path):
    f = tmp_path / "seed-setup"
    f.write_text(bench.SEED_SETUP)
    r = subprocess.run(["shellcheck", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_seed_setup_uses_only_bake_scripts_that_exist():
    import re

    for name in set(re.findall(r"scripts/([a-z-]+\.sh)", bench.SEED_SETUP)):
        assert (ROOT / "image" / "scripts" / name).is_file(), name


def test_image_sources_tarball_holds_scripts_and_context(tmp_path):
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(bench.image_sources_tarball(ROOT / "image"))) as tar:
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
    with bench.loopback_http_server(tmp_path) as port:
        assert _get(f"http://127.0.0.1:{port}/nextcloud.env") == b"NEXTCLOUD_DB_HOST=10.0.2.2\n"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nextcloud.env", timeout=2)


# ---- the result document and its table ---------------------------------------------------------------------
def _doc(measurements: dict, fingerprint: str = "f" * 64) -> dict:
    return {"schema": bench.SCHEMA, "env": "local", "generated_at": "2026-11-26T17:00:00Z",
            "machine": {"cores": 2, "cpu_model": "Test CPU"}, "artifact": {"fingerprint": fingerprint},
            "measurements": measurements}


def test_merge_keeps_earlier_measurements_of_the_same_artifact_and_recomputes_targets():
    previous = bench.merge_results(None, _doc({"boot_bare_s": _timing(70, 71, 72)}))
    merged = bench.merge_results(previous, _doc({"boot_baked_ready_s": _timing(80, 81, 82)}))
    assert set(merged["measurements"]) == {"boot_bare_s", "boot_baked_ready_s"}
    assert merged["ratios"]["baked_vs_bare"] == 1.14
    assert next(t for t in merged["targets"] if t["name"] == "baked_vs_bare")["met"] is True
    json.dumps(merged)  # the document is plain JSON


def test_merge_labels_measurements_of_another_artifact():
    previous = bench.merge_results(None, _doc({"boot_baked_ready_s": _timing(80)}, fingerprint="a" * 64))
    merged = bench.merge_results(previous, _doc({"boot_bare_s": _timing(70)}))
    assert merged["measurements"]["boot_baked_ready_s"]["artifact_fingerprint"] == "a" * 64
    assert merged["measurements"]["boot_bare_s"]["artifact_fingerprint"] == "f" * 64
    assert merged["mixed_artifacts"] == ["a" * 64, "f" * 64]
    assert "measured on different artifacts" in _render(merged)
    same = bench.merge_results(None, _doc({"boot_bare_s": _timing(70)}))
    assert same["mixed_artifacts"] is None and "different artifacts" not in _render(same)


def _render(doc: dict) -> str:
    console = Console(record=True, width=200)
    console.print(bench.render_table(doc))
    return console.export_text()


def test_table_shows_medians_spread_ratios_and_verdicts():
    doc = bench.merge_results(None, _doc({
        "boot_bare_s": _timing(70, 72, 74),
        "boot_baked_ready_s": _timing(100, 104, 110),
        "boot_seed_ready_s": _timing(600, 640, 700),
        "noop_rebuild_s": {**_timing(1.2, 1.4, 1.3), "proof": {"no_vm_started": True, "manifest_reused": True,
                                                                "qemu_seen": False, "packer_seen": False}},
        "full_bake_s": {"value": 412.3, "source": "manifest of the bake at X"},
        "bake_steps": bench.bake_breakdown(PACKER_TIMINGS),
        "footprint": {"image_used_bytes": 2_100_000_000, "fs_size_bytes": 6_400_000_000,
                      "artifact_file_bytes": 1_900_000_000, "nextcloud_image_bytes": 700_000_000},
    }))
    text = _render(doc)
    assert "72.0 s" in text and "70.0–74.0 (4.0)" in text and "70.0, 72.0, 74.0" in text
    assert "1.44×" in text and "6.15×" in text
    assert "proven" in text and "412.3 s" in text and "install-docker.sh" in text
    assert "2.10 GB" in text and "0.70 GB" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    assert "no" in rows["boot_baked_ready_s (→ /readyz 200)"].split("│")[7]
    assert "yes" in rows["noop_rebuild_s (inv build-ami)"].split("│")[7]


def test_table_says_what_was_not_measured_or_failed():
    doc = bench.merge_results(None, _doc({"boot_seed_ready_s": {"samples": [], "stats": bench.summarize([]),
                                                                "error": "run 1: timed out after 2400s"}}))
    text = _render(doc)
    assert "not measured" in text and "error" in text and "timed out" in text


def test_cli_show_prints_the_table_of_the_last_results(tmp_path, monkeypatch):
    results = ROOT / bench.RESULTS
    if not results.is_file():
        pytest.skip("no build/bench/results.json yet")
    r = subprocess.run([sys.executable, "-m", "infra.bench", "--show"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "boot_bare_s" in r.stdout


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
    inputs = bench.Inputs(root=tmp_path, settings=settings, artifact=None, artifact_record={}, base=None,
                          fingerprint=fp)
    assert bench.noop_precondition(inputs) is None
    resolved["id"] = "sha256:" + "3" * 64
    assert "would bake, not reuse" in bench.noop_precondition(inputs)


def test_markdown_summary_has_the_headline_numbers_and_verdicts():
    doc = bench.merge_results(None, _doc({
        "boot_bare_s": _timing(70, 72, 74),
        "boot_baked_ready_s": _timing(100, 104, 110),
        "footprint": {"image_used_bytes": 1_370_000_000, "artifact_file_bytes": 1_690_000_000},
    }))
    md = bench.markdown_summary(doc)
    row = "| boot_baked_ready_s (→ /readyz 200) | 104.0 s | 100.0–110.0 s, n=3 | 1.44× bare (target ≤ 1.15×) | missed |"
    assert row in md
    assert "| boot_seed_ready_s (→ /readyz 200) | not measured |" in md
    assert "1.37 GB" in md and "2 cores of Test CPU" in md


def test_uncontended_view_keeps_only_boots_without_other_vms():
    def boot(v, start=(), end=()):
        return {"value_s": v, "other_qemu_at_start": list(start), "other_qemu_at_end": list(end)}

    m = {
        "boot_bare_s": {**_timing(146, 124, 92), "details": [boot(146, [1]), boot(124, (), [2]), boot(92)]},
        "boot_baked_ready_s": {**_timing(134, 135, 131), "details": [boot(134), boot(135), boot(131)]},
    }
    view = bench.uncontended_view(m)
    assert view["boot_bare_s"]["samples"] == [92]
    assert view["ratios"]["baked_vs_bare"] == 1.46
    assert "no other VM: 92.0 s (n=1)" in _render(bench.merge_results(None, _doc(m)))


def test_a_bake_starting_under_the_noop_command_is_stopped_at_once(tmp_path):
    fake = tmp_path / "qemu-system-x86_64"
    fake.symlink_to(shutil.which("sleep"))
    r = bench.watch_process_tree(["sh", "-c", f"{fake} 60"], ROOT, forbid=bench._is_bake)
    assert r["stopped"] == "stopped: qemu-system-x86_64 started"
    assert r["seconds"] < 30 and r["exit_code"] != 0


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
    target = bench.BootTarget(base, tmp_path / "vmlinuz", tmp_path / "initrd.img")
    floor = bench.floor_disk(root, target, log=lambda _m: None)
    assert floor.disk != base and base.read_bytes() == before
    for rel in bench.FLOOR_FILES:
        out = subprocess.run(["debugfs", "-R", f"cat /{rel}", str(floor.disk)], capture_output=True, text=True)
        assert out.stdout == (ROOT / "image" / "rootfs" / rel).read_text(), rel
        stat = subprocess.run(["debugfs", "-R", f"stat /{rel}", str(floor.disk)], capture_output=True, text=True)
        assert "Mode:  0644" in stat.stdout and "User:     0" in stat.stdout, stat.stdout[:300]
    assert "ssh_genkeytypes: [ed25519, ecdsa]" in (ROOT / "image" / "rootfs" / bench.FLOOR_FILES[0]).read_text()
    assert bench.floor_disk(root, target, log=lambda _m: None).disk == floor.disk, "cached by content"
