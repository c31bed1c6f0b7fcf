"""Bake the local twin's image: Packer's qemu source on the base disk, under TCG.

``build_local_image()`` is what ``inv build-ami --env local`` calls. It takes the rendered
build directory (``build/<env>/``: packer-vars.json, nextcloud.env, fingerprint), makes
sure the base disk and the stand-in Nextcloud archive are cached, runs
``packer build -only=qemu.nextcloud`` and writes ``build/<env>/manifest.json``::

    {"artifact_id": ".../artifacts/<fingerprint>/nextcloud.qcow2", "sha256": "...",
     "fingerprint": "...", "reused": false, "built_at": "...Z", "kernel": "...",
     "initrd": "...", "timings": {...}, ...}

Before anything else it resolves the exact inputs, as an AWS bake resolves its source AMI:
the base disk's digest and the stand-in Nextcloud image's digest (both cached, so this takes
milliseconds), and renders them into the fingerprint. With unchanged inputs (an artifact for
this fingerprint whose sha256 still matches) it returns that artifact with ``reused: true``
without starting a VM. A bake pushes the stand-in to the twin's loopback registry and the VM
pulls it from there by digest (infra/localtwin/registry.py). The artifact is made read-only: instances boot
from qcow2 overlays (``qemu-img create -b``), never from the artifact itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from infra import build_record
from infra.errors import PipelineError
from infra.localtwin import base_disk, standin
from infra.localtwin.accel import choose_accelerator
from infra.localtwin.registry import GUEST_REGISTRY, LoopbackRegistry, RegistryError
from infra.packer import PackerError, run_packer_build

REPO_ROOT = Path(__file__).resolve().parents[2]
ONLY = "qemu.nextcloud"
QCOW2_NAME = "nextcloud.qcow2"
RENDERED = ("packer-vars.json", "nextcloud.env", "secret-references.json", "fingerprint")

Log = Callable[[str], None]


class BuildError(PipelineError, RuntimeError):
    """The local image cannot be built; the message says why and what to do."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (artifacts are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_fingerprint(build_dir: Path) -> str:
    """The rendered fingerprint (one hex sha256 line); BuildError when missing or malformed."""
    missing = [name for name in RENDERED if not (build_dir / name).is_file()]
    if missing:
        raise BuildError(
            f"{build_dir} lacks {', '.join(missing)}: render the environment first (inv render --env <env>)"
        )
    fingerprint = (build_dir / "fingerprint").read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise BuildError(f"{build_dir / 'fingerprint'} is not a hex sha256 line; re-render the environment")
    return fingerprint


def literal_secrets(user_data: Path) -> list[str]:
    """Secret values written literally (``literal:<value>``) in rendered user data.

    The local environment carries its secrets as literals in instance.json; the bake must
    never see them, so they become canaries that validate.sh proves are nowhere on the image.
    """
    if not user_data.is_file():
        return []
    try:
        cloud_config = yaml.safe_load(user_data.read_text()) or {}
        contents = [
            json.loads(f.get("content", "{}"))
            for f in cloud_config.get("write_files") or []
            if f.get("path") == "/etc/nextcloud/instance.json"
        ]
    except (yaml.YAMLError, json.JSONDecodeError, AttributeError) as exc:
        raise BuildError(f"{user_data}: cannot read instance.json from the user data ({exc})") from exc
    values = {
        ref.removeprefix("literal:")
        for content in contents
        for ref in (content.get("secrets") or {}).values()
        if isinstance(ref, str) and ref.startswith("literal:")
    }
    # Short values would match by chance; the random canaries still guard the check.
    return sorted(v for v in values if len(v) >= 8 and "," not in v)


def _artifact_record(artifact_dir: Path) -> dict | None:
    try:
        return json.loads((artifact_dir / "artifact.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def find_reusable_artifact(build_dir: Path, fingerprint: str) -> dict | None:
    """The recorded artifact for this fingerprint, if intact; else None.

    The fingerprint covers the resolved base disk and stand-in digests, so an artifact recorded under it was baked
    from exactly these inputs.
    """
    record = _artifact_record(build_dir / "artifacts" / fingerprint)
    if not record or record.get("fingerprint") != fingerprint:
        return None
    paths = [Path(record.get(k, "")) for k in ("artifact_id", "kernel", "initrd")]
    if not all(p.is_file() for p in paths):
        return None
    if file_sha256(paths[0]) != record.get("sha256"):
        return None
    return record


def resolve_local_inputs(settings: Any, log: Log = print) -> tuple[Any, base_disk.BaseDisk, standin.StandinImage]:
    """The local twin's exact build inputs, resolved on the host like an AWS bake's source AMI: the base disk's
    digest and the digest-pinned stand-in image (each built once, then read from its cache)."""
    from render.outputs import ResolvedInputs

    base = base_disk.ensure_base_disk(log=log)
    image = nextcloud_base_image(settings, log)
    resolved = ResolvedInputs(
        base_image_id=base.digest, base_image_name=base.label, nextcloud_image=image.reference(GUEST_REGISTRY),
    )
    return resolved, base, image


def nextcloud_base_image(settings: Any, log: Log = print) -> standin.StandinImage:
    """The twin's Nextcloud base image: the verified release named by ``nextcloud.release``, else the stand-in."""
    from infra.localtwin import release_image

    try:
        if settings.nextcloud.release:
            return release_image.ensure_release_image(Path(settings.nextcloud.release), log=log)
        return standin.ensure_standin_image(settings.nextcloud.image, settings.nextcloud.version, log=log)
    except (RuntimeError, ValueError) as exc:
        raise BuildError(f"Nextcloud base image: {exc}") from exc


def current_fingerprint(root: Path, settings: Any, build_dir: Path, log: Log = print) -> str:
    """Resolve, render build/<env>/ with the resolved inputs and return the fingerprint a bake now would have."""
    from render.outputs import render_all, write_outputs

    resolved, _, _ = resolve_local_inputs(settings, log=log)
    write_outputs(build_dir, render_all(root, settings, resolved))
    return read_fingerprint(build_dir)


def packages_summary(version_info: dict) -> dict:
    """The manifest's summary of the image's packages: the engine pins, the count and a digest of the full list
    (the list itself is in version-info.json beside it), and the Nextcloud base image digest."""
    packages = version_info.get("packages") or {}
    listing = "".join(f"{name}\t{version}\n" for name, version in sorted(packages.items()))
    return {
        "docker_packages": version_info.get("docker_packages"),
        "held": version_info.get("held_packages"),
        "count": len(packages),
        "list_sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "nextcloud_image": version_info.get("nextcloud_image"),
        "nextcloud_image_digest": version_info.get("nextcloud_image_digest"),
    }


def _write_seed(seed_dir: Path, public_key: str) -> None:
    """NoCloud seed for the bake VM: only the bake's throwaway key for the default user."""
    seed_dir.mkdir(parents=True, exist_ok=True)
    (seed_dir / "user-data").write_text(
        "#cloud-config\n"
        "# Bake only: lets Packer log in as the default user. cleanup.sh removes the key.\n"
        f"ssh_authorized_keys:\n  - {public_key}\n"
    )
    (seed_dir / "meta-data").write_text(f"instance-id: bake-{secrets.token_hex(8)}\nlocal-hostname: nextcloud-bake\n")


def extract_boot_files(qcow2: Path, dest: Path) -> tuple[Path, Path]:
    """Copy the kernel and initrd out of the baked image (what it will really boot).

    Host-side, without mounting: convert to a sparse raw file and read /boot with debugfs.
    """
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        raw = Path(tmp) / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(qcow2), str(raw)], check=True)
        listing = subprocess.run(
            ["debugfs", "-R", "ls -p /boot", str(raw)], capture_output=True, text=True, check=True
        ).stdout
        names = [fields[4] for line in listing.splitlines() if len(fields := line.strip("/").split("/")) > 4]
        kernels = sorted(n for n in names if n.startswith("vmlinuz-"))
        initrds = sorted(n for n in names if n.startswith("initrd.img-"))
        if len(kernels) != 1 or len(initrds) != 1:
            raise BuildError(f"baked image: expected one kernel and one initrd in /boot, found {kernels} {initrds}")
        out = []
        for name, target in ((kernels[0], "vmlinuz"), (initrds[0], "initrd.img")):
            path = dest / target
            path.unlink(missing_ok=True)
            subprocess.run(
                ["debugfs", "-R", f"dump /boot/{name} {path}", str(raw)], capture_output=True, check=True
            )
            if not path.is_file() or path.stat().st_size == 0:
                raise BuildError(f"baked image: could not extract /boot/{name}")
            path.chmod(0o444)
            out.append(path)
    return out[0], out[1]


def build_local_image(
    root: Path = REPO_ROOT,
    settings: Any = None,
    *,
    env: str | None = None,
    force: bool = False,
    extra_canaries: Sequence[str] = (),
    build_root: Path | None = None,
    log: Log = print,
) -> dict:
    """Bake (or reuse) the local image of ``build/<env>/`` and return its manifest.

    ``root`` is the repository; the environment is ``settings.name`` (render's Settings;
    then ``build_root/<env>`` is rendered first) or ``env`` (default ``local``; then the
    files already rendered in ``build_root/<env>`` are used; default ``root/build``).
    ``extra_canaries`` are strings validate.sh must not find on the image (the literal
    secrets of ``user-data.yaml`` and two random canaries are always added). ``force``
    bakes even when a reusable artifact exists. Raises BuildError (bad or missing inputs)
    or PackerError (the bake failed; Packer's output says where).
    """
    started = time.monotonic()
    env = getattr(settings, "name", None) or env or "local"
    build_root = (build_root or root / "build").resolve()
    build_dir = build_record.build_dir(root, env, build_root)
    timings: dict[str, float] = {}
    base = image = None
    if settings is not None:
        # Resolve and render first, so the fingerprint the reuse decision rests on covers the exact base disk and
        # stand-in image and the image/ and packer/ files as they are now, not as at the last `inv render`.
        from render.outputs import render_all, write_outputs

        t = time.monotonic()
        resolved, base, image = resolve_local_inputs(settings, log=log)
        timings["resolve_seconds"] = round(time.monotonic() - t, 1)
        write_outputs(build_dir, render_all(root, settings, resolved))
    fingerprint = read_fingerprint(build_dir)
    if not (root / "image" / "nextcloud" / "Dockerfile").is_file():
        raise BuildError("image/nextcloud/Dockerfile is missing: the image overlay has to exist before a bake")
    artifact_dir = build_dir / "artifacts" / fingerprint

    if not force:
        record = find_reusable_artifact(build_dir, fingerprint)
        if record:
            manifest = {**record, "reused": True}
            build_record.write(build_dir, manifest)
            log(f"bake: reusing {record['artifact_id']} (fingerprint {fingerprint[:12]}, inputs unchanged)")
            return manifest
    if base is None or image is None:
        raise BuildError(f"no artifact for fingerprint {fingerprint[:12]} to reuse, and no settings to bake with: "
                         f"run `inv build-ami --env {env}`")

    # Packer refuses an existing output directory; whatever is there is a failed bake.
    if artifact_dir.exists():
        for p in artifact_dir.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(artifact_dir)
    artifact_dir.parent.mkdir(parents=True, exist_ok=True)
    work = build_dir / ".bake"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o700)
    key = work / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "packer-bake", "-f", str(key)], check=True
    )
    _write_seed(work / "seed", (work / "id_ed25519.pub").read_text().strip())

    canaries = [f"canary-{secrets.token_hex(16)}" for _ in range(2)]
    canaries += literal_secrets(build_dir / "user-data.yaml") + [c for c in extra_canaries if c]
    if any("," in c for c in canaries):
        raise BuildError("a canary contains a comma; VALIDATE_CANARIES is comma-separated")
    build_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    from render.outputs import stage_image_upload

    stage_image_upload(root, work / "image")
    accel = choose_accelerator(Path(base.kernel))
    log(f"bake: {accel.describe()}")
    variables = {
        "fingerprint": fingerprint,
        "git_sha": build_record.git_sha(),
        "build_time": build_time,
        "build_dir": str(build_dir),
        "output_dir": str(artifact_dir),
        "base_disk": str(base.disk),
        "accelerator": accel.name,
        "qemu_cpu": accel.cpu,
        "kernel": str(base.kernel),
        "initrd": str(base.initrd),
        "image_upload_dir": str(work / "image"),
        "bake_insecure_registry": GUEST_REGISTRY,
        "ssh_private_key_file": str(key),
        "bake_seed_dir": str(work / "seed"),
    }
    (build_dir / "version-info.json").unlink(missing_ok=True)
    registry = LoopbackRegistry()
    t = time.monotonic()
    try:
        registry.start()
        registry.push(image)
    except RegistryError as exc:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
        raise BuildError(str(exc)) from exc
    timings["registry_push_seconds"] = round(time.monotonic() - t, 1)
    log(f"bake: {image.repository}:{image.tag}@{image.digest[:19]} served on {registry.address} "
        f"(guest: {GUEST_REGISTRY})")
    log(f"bake: packer build -only={ONLY} (fingerprint {fingerprint[:12]}"
        + (", TCG: several minutes" if accel.name == "tcg" else "") + ") ...")
    t = time.monotonic()
    try:
        result = run_packer_build(
            root / "packer",
            var_file=build_dir / "packer-vars.json",
            variables=variables,
            sensitive_variables={"validate_canaries": ",".join(canaries)},
            only=ONLY,
            manifest_path=build_dir / build_record.PACKER_MANIFEST,
            log=log,
            cwd=root,
            # Packer's download cache would otherwise land in the repository's top level.
            extra_env={"PACKER_CACHE_DIR": str(build_root / "cache" / "packer")},
        )
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    timings["bake_seconds"] = round(time.monotonic() - t, 1)

    qcow2s = [Path(f) for f in result.entry.files if f.endswith(".qcow2")]
    if len(qcow2s) != 1 or not qcow2s[0].is_file():
        raise PackerError(f"Packer manifest lists no single qcow2 artifact: {result.entry.files}")
    qcow2 = qcow2s[0].resolve()
    t = time.monotonic()
    kernel, initrd = extract_boot_files(qcow2, artifact_dir)
    qcow2.chmod(0o444)
    sha = file_sha256(qcow2)
    timings["finalize_seconds"] = round(time.monotonic() - t, 1)
    timings["total_seconds"] = round(time.monotonic() - started, 1)

    try:
        version_info = json.loads((build_dir / "version-info.json").read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"the bake did not hand back its version-info.json ({exc})") from exc
    (artifact_dir / "version-info.json").write_text(json.dumps(version_info, indent=2) + "\n")
    # The step timings beside the artifact too: the build directory's copy is overwritten by the next bake.
    shutil.copyfile(result.timings_path, artifact_dir / "packer-timings.json")
    record = {
        "artifact_id": str(qcow2),
        "sha256": sha,
        "size_bytes": qcow2.stat().st_size,
        "fingerprint": fingerprint,
        "reused": False,
        "built_at": build_time,
        "accelerator": accel.name,
        "kernel": str(kernel),
        "initrd": str(initrd),
        "git_sha": variables["git_sha"],
        "base_image": base.digest,
        "base_image_name": base.label,
        "base_disk_key": base.key,
        "nextcloud_image": image.reference(GUEST_REGISTRY),
        # What drove the bake (the expected values test-ami hands the image suite) and what it installed.
        "inputs": json.loads((build_dir / "packer-vars.json").read_text()),
        "packages": packages_summary(version_info),
        "version_info": str(artifact_dir / "version-info.json"),
        "packer_run_uuid": result.entry.packer_run_uuid,
        "timings": {**timings, "packer_steps": str(result.timings_path)},
    }
    (artifact_dir / "artifact.json").write_text(json.dumps(record, indent=2) + "\n")
    build_record.write(build_dir, record)
    log(f"bake: {qcow2} ({record['size_bytes'] / 1e6:.0f} MB) in {timings['bake_seconds']:.0f}s")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m infra.localtwin.build [ENV] [--force]``: bake and print the manifest."""
    args = list(sys.argv[1:] if argv is None else argv)
    force = "--force" in args
    rest = [a for a in args if a != "--force"]
    try:
        manifest = build_local_image(REPO_ROOT, env=rest[0] if rest else "local", force=force)
    except (BuildError, PackerError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(manifest, indent=2))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
