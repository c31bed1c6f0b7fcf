"""Drive ``packer build`` and read what it produced.

``run_packer_build`` runs Packer with ``-machine-readable``, streams each step to the
terminal as it happens (with the elapsed time), records how long every step took (the
provisioning scripts in particular) and returns the artifact read from Packer's manifest,
never from log output. Packer's manifest appends one entry per build and run; the entry
that belongs to this run is the one whose ``packer_run_uuid`` equals ``last_run_uuid``.

Sensitive variables are handed to Packer through ``PKR_VAR_<name>`` environment
variables, so they appear neither in the process list nor in a log.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra.errors import PipelineError

Log = Callable[[str], None]

# Terminal colour codes in the scripts' output (docker build colours stderr).
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Packer's machine-readable output escapes these inside the data fields.
_UNESCAPE = (("%!(PACKER_COMMA)", ","), ("\\n", "\n"), ("\\r", "\r"))


class PackerError(PipelineError, RuntimeError):
    """Packer failed, or its manifest does not say what was built."""


@dataclass(frozen=True)
class MachineReadableLine:
    """One line of ``packer -machine-readable`` output: ``timestamp,target,type,data...``."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]


def parse_machine_readable(line: str) -> MachineReadableLine | None:
    """Parse one output line; None for lines that are not machine-readable records."""
    parts = line.rstrip("\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    data = []
    for part in parts[3:]:
        for escaped, plain in _UNESCAPE:
            part = part.replace(escaped, plain)
        data.append(part)
    return MachineReadableLine(int(parts[0]), parts[1], parts[2], tuple(data))


@dataclass
class Step:
    """A step of the build as Packer announces it (``==> build: message``)."""

    name: str
    kind: str  # "provisioner" (a provisioning step), "builder" or "post-processor"
    started_s: float
    seconds: float | None = None


def _step_kind(message: str) -> str:
    if message.startswith(("Provisioning with", "Uploading ", "Downloading ")):
        return "provisioner"
    if message.startswith("Running post-processor"):
        return "post-processor"
    return "builder"


def _step_name(message: str) -> str:
    # "Provisioning with shell script: /abs/path/image/scripts/install-docker.sh" -> "shell: install-docker.sh"
    if message.startswith("Provisioning with shell script: "):
        path = message.removeprefix("Provisioning with shell script: ")
        name = Path(path).name
        return "shell: inline" if name.startswith("packer-shell") else f"shell: {name}"
    return message


@dataclass
class StepTimer:
    """Turns the stream of Packer UI messages into timed steps.

    A step starts at its ``==>`` announcement and ends when the next one starts (or the
    build ends). Times are taken when a line arrives, which is sub-second accurate because
    the output is streamed.
    """

    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)

    def announce(self, message: str, now: float | None = None) -> Step:
        now = time.monotonic() if now is None else now
        self._close(now)
        step = Step(_step_name(message), _step_kind(message), round(now - self.started, 2))
        self.steps.append(step)
        return step

    def finish(self, now: float | None = None) -> None:
        self._close(time.monotonic() if now is None else now)

    def _close(self, now: float) -> None:
        if self.steps and self.steps[-1].seconds is None:
            last = self.steps[-1]
            last.seconds = max(0.0, round(now - self.started - last.started_s, 2))

    def as_dict(self) -> dict:
        return {
            "total_seconds": round(sum(s.seconds or 0 for s in self.steps), 2),
            "provisioning_seconds": round(sum(s.seconds or 0 for s in self.steps if s.kind == "provisioner"), 2),
            "steps": [asdict(s) for s in self.steps],
        }


@dataclass(frozen=True)
class ManifestEntry:
    """The manifest entry of one build of one run."""

    name: str
    builder_type: str
    artifact_id: str
    files: tuple[str, ...]
    packer_run_uuid: str
    build_time: int
    custom_data: Mapping[str, str]


def read_manifest(path: Path, build_name: str | None = None, builder_type: str | None = None) -> ManifestEntry:
    """Return the entry of the last run (``packer_run_uuid == last_run_uuid``).

    With several sources in one run, ``build_name``/``builder_type`` pick one. Raises
    PackerError when the manifest is missing, malformed or has no entry for the last run.
    """
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise PackerError(f"Packer manifest {path} not found: the manifest post-processor did not run") from exc
    except json.JSONDecodeError as exc:
        raise PackerError(f"Packer manifest {path} is not valid JSON: {exc}") from exc
    last = manifest.get("last_run_uuid")
    if not last:
        raise PackerError(f"Packer manifest {path} has no last_run_uuid")
    entries = [
        b for b in manifest.get("builds", [])
        if b.get("packer_run_uuid") == last
        and (build_name is None or b.get("name") == build_name)
        and (builder_type is None or b.get("builder_type") == builder_type)
    ]
    if len(entries) != 1:
        raise PackerError(
            f"Packer manifest {path}: expected one build of run {last} "
            f"(name={build_name}, builder_type={builder_type}), found {len(entries)}"
        )
    b = entries[0]
    return ManifestEntry(
        name=b.get("name", ""),
        builder_type=b.get("builder_type", ""),
        artifact_id=b.get("artifact_id", ""),
        files=tuple(f["name"] for f in b.get("files") or []),
        packer_run_uuid=last,
        build_time=int(b.get("build_time", 0)),
        custom_data=dict(b.get("custom_data") or {}),
    )


@dataclass(frozen=True)
class PackerResult:
    """What a successful ``packer build`` produced."""

    entry: ManifestEntry
    timings: dict
    timings_path: Path


def _fmt_elapsed(seconds: float) -> str:
    return f"{int(seconds) // 60:02d}:{int(seconds) % 60:02d}"


def run_packer_build(
    template: Path,
    *,
    var_file: Path,
    variables: Mapping[str, str],
    sensitive_variables: Mapping[str, str] | None = None,
    only: str,
    manifest_path: Path,
    timings_path: Path | None = None,
    log: Log = print,
    packer: str = "packer",
    extra_args: Sequence[str] = (),
    cwd: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    manifest_name: str | None = None,
) -> PackerResult:
    """Run ``packer build -machine-readable -only=<only>`` and return the manifest entry.

    ``template`` is the template directory (or file), ``variables`` are passed with
    ``-var``, ``sensitive_variables`` through ``PKR_VAR_<name>``. ``only`` is
    ``<builder type>.<build name>``, e.g. ``qemu.nextcloud``; Packer's manifest names an entry
    after its *source*, so a build that renames a source (``source "source.amazon-ebs.nextcloud"
    { name = "emulator" }``) is found with ``manifest_name="nextcloud"``. Progress goes to ``log``
    as ``[mm:ss] message``; step timings are written to ``timings_path`` (default:
    ``packer-timings.json`` beside the manifest). ``extra_env`` adds environment variables
    (e.g. ``PACKER_CACHE_DIR``). Raises PackerError when Packer fails.
    """
    builder_type, _, source_name = only.partition(".")
    if not source_name:
        raise PackerError(f"only={only!r}: expected <builder type>.<source name>, e.g. qemu.nextcloud")
    timings_path = timings_path or manifest_path.with_name("packer-timings.json")
    cmd = [packer, "build", "-machine-readable", "-color=false", f"-only={only}", f"-var-file={var_file}"]
    for name, value in variables.items():
        cmd.append(f"-var={name}={value}")
    cmd += [*extra_args, str(template)]
    env = {**os.environ, **(extra_env or {})}
    for name, value in (sensitive_variables or {}).items():
        env[f"PKR_VAR_{name}"] = value
    env.setdefault("CHECKPOINT_DISABLE", "1")  # no phoning home to HashiCorp

    timer = StepTimer()
    errors: list[str] = []
    run_uuid = ""
    entry: ManifestEntry | None = None
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env, cwd=cwd
        )
    except FileNotFoundError as exc:
        raise PackerError(f"{packer} not found: install it with `apt-get install packer`") from exc
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            rec = parse_machine_readable(raw)
            if rec is None:
                if raw.strip():
                    log(raw.rstrip())
                continue
            elapsed = _fmt_elapsed(time.monotonic() - timer.started)
            if rec.type == "ui" and rec.data:
                level, text = rec.data[0], _ANSI.sub("", ",".join(rec.data[1:]))
                if level == "error":
                    # One entry per message, on one line: a reason spread over lines (a filter dump) stays whole.
                    errors.append(" ".join(text.split()))
                for line in text.splitlines() or [""]:
                    message = line.strip()
                    if level == "say" and message.startswith("==> "):
                        # "==> qemu.nextcloud: Provisioning with shell script: ..."
                        _, _, message = message.partition(": ")
                        if message:
                            timer.announce(message)
                            log(f"[{elapsed}] {message}")
                    elif level == "error" and message.startswith("==> "):
                        # A remote script's stderr: output, not necessarily a failure.
                        _, _, rest = message.partition(": ")
                        log(f"[{elapsed}]     {rest}")
                    elif level == "error":
                        log(f"[{elapsed}] ERROR {message}")
                    elif message:
                        _, sep, rest = message.partition(": ")
                        log(f"[{elapsed}]     {rest if sep else message}")
            elif rec.type == "error" and rec.data:
                errors.append(" ".join(",".join(rec.data).split()))
        rc = proc.wait()
    except BaseException:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    timer.finish()
    timings = {"only": only, "exit_code": rc, **timer.as_dict()}

    if rc == 0:
        entry = read_manifest(manifest_path, build_name=manifest_name or source_name, builder_type=builder_type)
        run_uuid = entry.packer_run_uuid
    timings["packer_run_uuid"] = run_uuid
    timings_path.parent.mkdir(parents=True, exist_ok=True)
    timings_path.write_text(json.dumps(timings, indent=2) + "\n")
    if rc != 0 or entry is None:
        detail = "\n".join(_failure_reasons(errors)) or "see the output above"
        raise PackerError(f"packer build -only={only} failed (exit {rc}):\n{detail}")
    return PackerResult(entry=entry, timings=timings, timings_path=timings_path)


def _failure_reasons(errors: list[str]) -> list[str]:
    """Packer ends a failed run with one "--> <build>: <reason>" per failed build: those are the reasons. Without
    that summary (Packer stopped earlier), the last error messages."""
    summary = [e.removeprefix("--> ") for e in errors if e.startswith("--> ")]
    return list(dict.fromkeys(summary or [e for e in errors[-3:] if e]))


def validate_template(root: Path, var_file: Path, packer: str = "packer") -> tuple[bool, str]:
    """``packer fmt -check`` and ``packer validate`` of packer/ for both sources with a rendered var file.

    The volatile ``-var``s infra passes at build time are filled with placeholders (files
    that exist, so the qemu source's path checks pass); ``nextcloud.env`` is taken from
    beside ``var_file``. Returns (ok, combined output) for ``inv validate``.
    """
    template = root / "packer"
    build_dir = var_file.parent.resolve()
    fingerprint_file = build_dir / "fingerprint"
    fingerprint = fingerprint_file.read_text().strip() if fingerprint_file.is_file() else "0" * 64
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    outputs: list[str] = []
    ok = True
    with tempfile.TemporaryDirectory(prefix="packer-validate-") as tmp:
        t = Path(tmp)
        for name in ("disk.raw", "vmlinuz", "initrd.img"):
            (t / name).write_bytes(b"placeholder")
        (t / "seed").mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(t / "key")], check=True)
        volatile = {
            "fingerprint": fingerprint, "git_sha": "0" * 40, "build_time": "2000-01-01T00:00:00Z",
            "build_dir": str(build_dir), "output_dir": str(t / "out"), "base_disk": str(t / "disk.raw"),
            "kernel": str(t / "vmlinuz"), "initrd": str(t / "initrd.img"),
            "image_upload_dir": str(root / "image"), "ssh_private_key_file": str(t / "key"),
            "bake_seed_dir": str(t / "seed"),
        }
        commands = [[packer, "fmt", "-check", "-diff", str(template)]] + [
            [packer, "validate", f"-only={only}", f"-var-file={var_file}",
             *(f"-var={k}={v}" for k, v in volatile.items()), str(template)]
            for only in ("amazon-ebs.nextcloud", "amazon-ebs.emulator", "qemu.nextcloud")
        ]
        for cmd in commands:
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
            except FileNotFoundError:
                return False, f"{packer} not found: install it with `apt-get install packer`"
            label = " ".join(cmd[1:3])
            # The qemu source's iso_checksum = "none" warning is expected: the base disk is built locally.
            text = (proc.stdout + proc.stderr).strip()
            if proc.returncode != 0:
                ok = False
                outputs.append(f"{label}: FAILED\n{text}")
            else:
                outputs.append(f"{label}: ok")
    return ok, "\n".join(outputs)


# ---- Packer versions and plugins ---------------------------------------------------------------------------
# Packer 1.10 removed the plugins it used to bundle; from then on the template's builders must be installed
# (`packer plugins install`, Packer >= 1.8). Debian's 1.6.6 has them built in and knows no `plugins` command.
# The template has both sources, and newer Packer refuses a template naming a builder it does not have, so a
# bake of either needs both plugins. Pinned: a newer plugin is a deliberate change, like any dependency.
UNBUNDLED_SINCE = (1, 10, 0)
PLUGINS = {"github.com/hashicorp/amazon": "1.8.0", "github.com/hashicorp/qemu": "1.1.0"}


def packer_version(packer: str = "packer") -> tuple[int, int, int]:
    """The version of ``packer`` as (major, minor, patch); PackerError when it is missing or says nothing usable."""
    try:
        proc = subprocess.run(
            [packer, "version"], capture_output=True, text=True, env={**os.environ, "CHECKPOINT_DISABLE": "1"},
            timeout=60,
        )
    except FileNotFoundError:
        raise PackerError(f"{packer} not found: install it with `apt-get install packer`") from None
    m = re.search(r"Packer v(\d+)\.(\d+)\.(\d+)", proc.stdout)
    if proc.returncode != 0 or not m:
        raise PackerError(f"`{packer} version` said {(proc.stdout + proc.stderr).strip()!r}: not a Packer binary?")
    return int(m[1]), int(m[2]), int(m[3])


def ensure_plugins(packer: str = "packer", plugins: Mapping[str, str] = PLUGINS, log: Log = print) -> list[str]:
    """Install the pinned plugins a Packer without bundled builders lacks; returns what was installed.

    Nothing to do for Packer < 1.10 (the builders are built in or bundled).
    """
    version = packer_version(packer)
    if version < UNBUNDLED_SINCE:
        return []
    env = {**os.environ, "CHECKPOINT_DISABLE": "1"}
    listed = subprocess.run([packer, "plugins", "installed"], capture_output=True, text=True, env=env, timeout=120)
    installed = []
    for source, pinned in plugins.items():
        binary = f"packer-plugin-{source.rsplit('/', 1)[-1]}_v{pinned}_"
        if binary in listed.stdout:
            continue
        log(f"packer {'.'.join(map(str, version))}: installing plugin {source} v{pinned}")
        proc = subprocess.run(
            [packer, "plugins", "install", source, f"v{pinned}"], capture_output=True, text=True, env=env, timeout=600
        )
        if proc.returncode != 0:
            raise PackerError(
                f"`packer plugins install {source} v{pinned}` failed: {(proc.stdout + proc.stderr).strip()}; "
                "install it by hand (or use Debian's packer 1.6.6, which has the builders built in)"
            )
        installed.append(f"{source} v{pinned}")
    return installed
