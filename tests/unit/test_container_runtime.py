"""The container's privileges and limits: one flag set for nextcloud.service and the lane, and a memory limit that
always holds what nextcloud-size-workers gives the workers."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from infra.lane.cluster import LaneError, container_runtime_flags, docker_sdk_runtime

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_ENV = ROOT / "image" / "rootfs" / "etc" / "nextcloud-image" / "container-runtime.env"
UNIT = ROOT / "image" / "rootfs" / "etc" / "systemd" / "system" / "nextcloud.service"
MEMORY = ROOT / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image" / "size-container-memory"
SIZE_WORKERS = ROOT / "image" / "nextcloud" / "bin" / "nextcloud-size-workers"

# What the container may do, and nothing more (container-runtime.env says why each is needed).
CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID"]


def _unit_exec_start() -> str:
    text = UNIT.read_text().replace("\\\n", " ")
    return next(line for line in text.splitlines() if line.startswith("ExecStart="))


def test_the_flag_set_drops_every_capability_but_the_needed_ones_and_limits_the_rest():
    runtime = docker_sdk_runtime(container_runtime_flags(memory_script=None))
    assert runtime["cap_drop"] == ["ALL"]
    assert sorted(runtime["cap_add"]) == CAPABILITIES
    assert runtime["security_opt"] == ["no-new-privileges"]
    assert runtime["pids_limit"] == 1024
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in runtime["ulimits"]] == [("core", 0, 0)]


def test_the_unit_passes_the_same_file_s_flags_and_the_memory_limit_unquoted():
    text = UNIT.read_text()
    assert "EnvironmentFile=/etc/nextcloud-image/container-runtime.env" in text
    assert "EnvironmentFile=-/run/nextcloud-container/memory.env" in text
    assert "size-container-memory --output /run/nextcloud-container/memory.env" in text
    start = _unit_exec_start().split()
    # Unquoted, so systemd splits them into words; before the image, so docker run reads them as its own flags.
    assert "$NEXTCLOUD_CONTAINER_HARDENING" in start and "$NEXTCLOUD_CONTAINER_MEMORY" in start
    assert start.index("$NEXTCLOUD_CONTAINER_MEMORY") < start.index("nextcloud-cluster:current")
    # No flag of the set is given a second, different way in the unit itself.
    assert not re.search(r"--(cap-|privileged|security-opt|pids-limit|ulimit|memory)", _unit_exec_start())


def test_the_lane_runs_nodes_with_the_instance_s_flags_and_the_memory_limit():
    flags = container_runtime_flags()
    assert flags[:-1] == RUNTIME_ENV.read_text().split("NEXTCLOUD_CONTAINER_HARDENING=", 1)[1].split()
    assert re.fullmatch(r"--memory=[1-9][0-9]*m", flags[-1])
    assert docker_sdk_runtime(flags)["mem_limit"] == flags[-1].split("=")[1]


@pytest.mark.parametrize("flag", ["--privileged", "--cap-add", "--device=/dev/fuse", "--ulimit=core=lots"])
def test_a_flag_the_lane_cannot_pass_is_an_error_not_dropped(flag):
    with pytest.raises(LaneError, match=re.escape(flag)):
        docker_sdk_runtime([flag])


def test_a_flag_file_without_the_hardening_line_is_an_error(tmp_path):
    f = tmp_path / "container-runtime.env"
    f.write_text("# nothing\nOTHER=--cap-drop=ALL\n")
    with pytest.raises(LaneError, match="NEXTCLOUD_CONTAINER_HARDENING"):
        container_runtime_flags(f, memory_script=None)


# ---- the memory limit -----------------------------------------------------------------------------------------------
def _meminfo(tmp_path: Path, mib: int) -> Path:
    f = tmp_path / "meminfo"
    f.write_text(f"MemTotal:       {mib * 1024} kB\nMemFree:          1234 kB\n")
    return f


def container_limit(tmp_path: Path, mib: int) -> int:
    out = subprocess.run([str(MEMORY), "--meminfo", str(_meminfo(tmp_path, mib))], capture_output=True, text=True,
                         timeout=30, check=True)
    return int(re.fullmatch(r"NEXTCLOUD_CONTAINER_MEMORY=--memory=(\d+)m\n", out.stdout).group(1))


def workers(tmp_path: Path, mib: int, cgroup_mib: int | None) -> int:
    cg = tmp_path / "memory.max"
    cg.write_text(f"{cgroup_mib * 1048576}\n" if cgroup_mib else "max\n")
    out = subprocess.run([str(SIZE_WORKERS), "--meminfo", str(_meminfo(tmp_path, mib)), "--cgroup-memory-max", str(cg)],
                         capture_output=True, text=True, timeout=30, check=True, env={"PATH": "/usr/bin:/bin"})
    return int(dict(line.split("=", 1) for line in out.stdout.splitlines())["NEXTCLOUD_APACHE_MAX_WORKERS"])


@pytest.mark.parametrize(("memtotal", "limit"), [(1536, 1024), (3871, 3359), (4096, 3584), (7800, 6825),
                                                  (15800, 13825), (64000, 56000)])
def test_the_limit_is_memtotal_minus_the_host_s_reserve(tmp_path, memtotal, limit):
    assert container_limit(tmp_path, memtotal) == limit


def test_the_limit_holds_the_workers_everywhere_and_does_not_change_their_count(tmp_path):
    for memtotal in range(1536, 66000, 977):
        limit = container_limit(tmp_path, memtotal)
        inside = workers(tmp_path, memtotal, limit)
        assert inside == workers(tmp_path, memtotal, None), memtotal
        # 100 MiB per worker (the default figure) and 512 MiB above them for one request at PHP's ceiling.
        assert inside * 100 + 512 <= limit, memtotal


@pytest.mark.parametrize(("args", "named"), [(["--meminfo", "/nonexistent"], "cannot read /nonexistent"),
                                             (["--bogus"], "unknown argument '--bogus'"),
                                             (["--output"], "--output needs a file")])
def test_bad_input_is_named(args, named):
    out = subprocess.run([str(MEMORY), *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and named in out.stderr and not out.stdout


def test_a_machine_too_small_for_the_container_is_refused(tmp_path):
    out = subprocess.run([str(MEMORY), "--meminfo", str(_meminfo(tmp_path, 1000))], capture_output=True, text=True)
    assert out.returncode == 2 and "at least 1536 MiB" in out.stderr


def test_output_file_is_written_whole_for_systemd(tmp_path):
    target = tmp_path / "memory.env"
    subprocess.run([str(MEMORY), "--meminfo", str(_meminfo(tmp_path, 4096)), "--output", str(target)], check=True,
                   capture_output=True)
    assert target.read_text() == "NEXTCLOUD_CONTAINER_MEMORY=--memory=3584m\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meminfo", "memory.env"]
