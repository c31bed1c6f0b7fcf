"""The seed-style boot: the base disk with user data that runs ``seed-style.sh``, the original setup's work done at
every boot (packages, Docker, the Nextcloud image, the derived image), against the same services."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import yaml

from infra.bench import BenchError, Log, now_iso
from infra.bench.boots import BenchInstance, BootTarget, installed_here, measure_alternating
from infra.bench.inputs import Inputs
from infra.bench.serve import loopback_http_server
from infra.bench.stats import summarize

SEED_SCRIPT = Path(__file__).with_name("seed-style.sh")
SEED_SCRIPT_PATH = "/usr/local/sbin/seed-setup"  # where the user data puts it in the guest
TIMINGS_PATH = "/var/log/seed-setup-timings.tsv"  # what the script writes, step<TAB>ms
# Where the guest finds the host's loopback on QEMU user-mode networking.
GUEST_HOST_IP = "10.0.2.2"


def seed_script() -> str:
    return SEED_SCRIPT.read_text()


def seed_user_data(base_user_data: str, base_url: str, nextcloud_image: str, fingerprint: str,
                   docker_packages: str = "docker.io", insecure_registry: str = "") -> str:
    """test-ami's rendered user data plus the seed-style setup: the script and a runcmd that runs it."""
    data = yaml.safe_load(base_user_data) or {}
    if not isinstance(data, dict):
        raise BenchError("rendered user data is not a cloud-config mapping")
    data.setdefault("write_files", []).append(
        {"path": SEED_SCRIPT_PATH, "owner": "root:root", "permissions": "0755", "content": seed_script()}
    )
    data.setdefault("runcmd", []).append(
        [SEED_SCRIPT_PATH, base_url, nextcloud_image, fingerprint, docker_packages, insecure_registry])
    return "#cloud-config\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def image_sources_tarball(image_dir: Path) -> bytes:
    """image/ as a gzipped tarball (what Packer's file provisioner uploads), without caches."""
    buf = io.BytesIO()

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        return None if "__pycache__" in info.name.split("/") else info

    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for child in sorted(image_dir.iterdir()):
            tar.add(child, arcname=child.name, filter=keep)
    return buf.getvalue()


def _seed_qcow2(base_disk: Path, size_gb: int, workdir: Path) -> Path:
    """A qcow2 over the raw base disk with the image's volume size, as an EC2 instance's root volume would be."""
    path = workdir / "seed-root.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base_disk.resolve()), "-F", "raw", str(path),
         f"{size_gb}G"],
        check=True, capture_output=True,
    )
    return path


def parse_step_timings(text: str) -> dict[str, float]:
    """The script's timings file (step<TAB>milliseconds per line) as seconds per step; other lines are skipped."""
    steps = {}
    for line in text.splitlines():
        name, _, ms = line.partition("\t")
        if ms.strip().isdigit():
            steps[name] = round(int(ms) / 1000, 1)
    return steps


def _seed_step_timings(inst: BenchInstance) -> dict[str, Any]:
    r = inst.ssh(f"sudo cat {TIMINGS_PATH}", timeout=60)
    return {"seed_steps_s": parse_step_timings(r.stdout)}


def measure_seed(stack: contextlib.ExitStack, inputs: Inputs, workdir: Path, user_data: str, runs: int,
                 timeout_s: float, log: Log, quiet_wait_s: float) -> dict[str, Any]:
    """``runs`` seed-style boots -> /readyz 200, with the sources served from the host and the stand-in image
    pushed to a loopback registry (both torn down with ``stack``)."""
    from infra.localtwin import standin
    from infra.localtwin.registry import GUEST_REGISTRY, LoopbackRegistry, RegistryError

    nc = inputs.settings.nextcloud
    image = standin.cached_standin_image(nc.image, nc.version)
    if image is None:
        return {"samples": [], "stats": summarize([]), "error": "the stand-in image is not cached: run "
                "`python -m infra.localtwin.standin` (or inv build-ami) first", "measured_at": now_iso()}
    try:
        registry = stack.enter_context(LoopbackRegistry())
        registry.push(image)
    except RegistryError as e:
        return {"samples": [], "stats": summarize([]), "error": str(e), "measured_at": now_iso()}
    serve = workdir / "serve"
    serve.mkdir()
    (serve / "image.tar.gz").write_bytes(image_sources_tarball(inputs.root / "image"))
    for rendered in ("nextcloud.env", "secret-references.json"):
        shutil.copyfile(inputs.build_dir / rendered, serve / rendered)
    port = stack.enter_context(loopback_http_server(serve))
    packer_vars = inputs.packer_vars()
    size_gb = int(packer_vars["root_volume_size_gb"])
    disk = _seed_qcow2(inputs.base.disk, size_gb, workdir)
    seed_ud = seed_user_data(user_data, f"http://{GUEST_HOST_IP}:{port}", str(packer_vars["nextcloud_image"]),
                             inputs.fingerprint, str(packer_vars["docker_packages"]), GUEST_REGISTRY)
    target = BootTarget(disk, inputs.base.kernel, inputs.base.initrd)

    def after(inst: BenchInstance) -> dict[str, Any]:
        return {**_seed_step_timings(inst), **installed_here(inst)}

    log(f"bench: seed-style sources served on 127.0.0.1:{port} (guest: http://{GUEST_HOST_IP}:{port}/)")
    (entry,) = measure_alternating([("seed", lambda n: (target, seed_ud, after), "ready")], runs, timeout_s, log,
                                   quiet_wait_s=quiet_wait_s)
    entry["root_volume_gb"] = size_gb
    return entry
