"""Render an environment's build inputs into build/<env>/ — the same inputs always give the same bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from render import capacity
from render.secret_refs import SECRET_VARIABLES, render_contract
from render.settings import Settings, secret_ref_kind

TEMPLATES = Path(__file__).parent / "templates"

# ---- what the fingerprint covers (the one place that says it; docs/settings.md "The fingerprint" points here) -
# The fingerprint is one sha256 that decides whether a bake would produce the same image: a scheduled rebuild whose
# fingerprint matches an existing artifact reuses it. It covers exactly what reaches the artifact:
#   1. IMAGE_UPLOAD: every file Packer uploads into the build VM (image/ without its READMEs; stage_image_upload()
#      copies exactly this set for Packer's file provisioner), with its executable bit;
#   2. the Packer template (PACKER_TEMPLATES): which scripts run, in which order, with which inputs;
#   3. the rendered build inputs: packer-vars.json (the settings that shape the image, the exact base image the bake
#      starts from -- the resolved source AMI id, or the local twin's base disk digest -- and the digest-pinned
#      Nextcloud image) and nextcloud.env (the non-secret container environment baked into the image).
# It deliberately leaves out:
#   - secrets and the instance role (allow_install/allow_upgrade): they reach an instance through its user data at
#     boot, never the image, so rotating a secret or changing a role never rebuilds the image;
#   - what changes from bake to bake without changing the image's content: git sha, build time, paths, canaries
#     (passed to Packer with -var, recorded in version-info and the manifest instead);
#   - documentation, tests and fixtures: the local twin's stand-in Nextcloud image enters only through its digest;
#   - the machine: no absolute paths, times or host names are hashed, so the same inputs give the same fingerprint
#     on any machine.
IMAGE_DIR = "image"
PACKER_DIR = "packer"
PACKER_TEMPLATES = "*.pkr.hcl"
_IGNORED_PARTS = {"__pycache__", ".pytest_cache", ".ruff_cache", "packer_cache"}
_IGNORED_SUFFIXES = (".pyc", ".swp", "~")
FINGERPRINT_VERSION = "v2"

# SECRET_VARIABLES (settings field → the environment variable the secret is delivered as) is part of the secret
# contract with the image's resolver, defined in render/secret_refs.py (imported above, also for code importing it
# from here).
USER_DATA = "user-data.yaml"
PACKER_VARS = "packer-vars.json"
NEXTCLOUD_ENV = "nextcloud.env"
FINGERPRINT = "fingerprint"
# The secret reference grammar the image's resolver parses user data with (render/secret_refs.py); baked in.
SECRET_REFERENCES = "secret-references.json"


def _jinja() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


@dataclass(frozen=True)
class ResolvedInputs:
    """What infra/ resolved on the host before a bake; render never looks anything up (it stays offline).

    They are build inputs like the settings: they go into packer-vars.json and therefore into the fingerprint,
    so the same selector resolving to a newer base image is a new image.

    - ``base_image_id``: AWS: the exact source AMI id (``ami-…``) the bake starts from; local twin: the base
      disk's digest (``sha256:…``).
    - ``base_image_name``: the AMI name or the base disk's label (recorded for people; part of the inputs too).
    - ``nextcloud_image``: the digest-pinned Nextcloud reference to bake, when the settings gave a tag that infra
      resolved; None means the settings' own (already pinned) reference.
    """

    base_image_id: str
    base_image_name: str = ""
    nextcloud_image: str | None = None


def packer_variables(s: Settings, resolved: ResolvedInputs | None = None) -> dict[str, object]:
    """The Packer variables that follow from the settings and the resolved inputs (volatile ones are added by
    infra at build time)."""
    resolved_vars: dict[str, object] = {}
    if resolved is not None:
        resolved_vars = {
            "source_image_id": resolved.base_image_id,
            "source_image_name": resolved.base_image_name,
            "nextcloud_image": resolved.nextcloud_image or s.nextcloud.image,
        }
    return {
        "env_name": s.name,
        "region": s.region,
        "instance_type": s.instance_type,
        "source_ami_owner": s.base_image.owner or "",
        "source_ami_name_filter": s.base_image.name_filter or "",
        "ami_name_prefix": s.ami.name_prefix,
        "ami_regions": list(s.ami.regions),
        "extra_tags": dict(sorted(s.tags.items())),
        "debian_release": s.base_image.debian_release,
        "nextcloud_image": s.nextcloud.image,
        "nextcloud_version": s.nextcloud.version,
        "docker_version": s.docker.version,
        # The database's CA bundle the bake downloads and checks (image/scripts/install-db-ca.sh); "" = none.
        "db_ca_bundle_url": s.database.ca_bundle_url if s.database.ca_bundle_sha256 else "",
        "db_ca_bundle_sha256": s.database.ca_bundle_sha256 or "",
        # Exact versions install-docker.sh installs and holds: "name=version ..." ("name" alone: not pinned).
        "docker_packages": " ".join(f"{n}={v}" if v else n for n, v in sorted(s.docker.packages().items())),
        "root_volume_size_gb": s.ami.root_volume_size_gb,
        "ssh_username": "admin",
        **resolved_vars,
    }


def nextcloud_environment(s: Settings) -> list[tuple[str, str]]:
    """Non-secret runtime environment of the Nextcloud container, baked into the image."""
    trusted = list(dict.fromkeys([s.site.domain, *s.site.trusted_domains]))
    variables = {
        "NEXTCLOUD_ENVIRONMENT": s.name,
        "NEXTCLOUD_DB_HOST": s.database.host,
        "NEXTCLOUD_DB_PORT": str(s.database.port),
        "NEXTCLOUD_DB_NAME": s.database.name,
        "NEXTCLOUD_DB_USER": s.database.user,
        **database_tls_environment(s),
        "NEXTCLOUD_REDIS_HOST": s.redis.host,
        "NEXTCLOUD_REDIS_PORT": str(s.redis.port),
        "NEXTCLOUD_REDIS_TLS": "1" if s.redis.tls else "0",
        "NEXTCLOUD_S3_BUCKET": s.s3.bucket or "",
        "NEXTCLOUD_S3_REGION": s.s3.region or (s.region if s.s3.bucket else ""),
        "NEXTCLOUD_S3_ENDPOINT": s.s3.endpoint or "",
        "NEXTCLOUD_S3_PATH_STYLE": "1" if s.s3.path_style else "0",
        "NEXTCLOUD_TRUSTED_DOMAINS": " ".join(trusted),
        "NEXTCLOUD_TRUSTED_PROXIES": " ".join(s.site.trusted_proxies),
        "NEXTCLOUD_OVERWRITE_HOST": s.site.domain,
        "NEXTCLOUD_OVERWRITE_PROTOCOL": s.site.overwrite_protocol,
        "NEXTCLOUD_OVERWRITE_CLI_URL": f"{s.site.overwrite_protocol}://{s.site.domain}",
        "NEXTCLOUD_HAS_INTERNET": "1" if s.site.internet else "0",
        "NEXTCLOUD_ADMIN_USER": s.cluster.admin_user,
        "NEXTCLOUD_LOGLEVEL": str(s.logs.nextcloud_loglevel),
        **web_tier_environment(s),
        # Host side (the units read this file too): where the logs go and whom the liveness watchdog tells. An AWS
        # instance belongs to an Auto Scaling group and ships its journal to the environment's log group; the local
        # twin has neither, so its logs stay in the journal and its watchdog only logs.
        "NEXTCLOUD_AWS_REGION": s.region,
        "NEXTCLOUD_LOG_DESTINATION": "cloudwatch" if s.builder == "aws" else "journal",
        "NEXTCLOUD_LOG_GROUP": s.logs.group_for(s.name) if s.builder == "aws" else "",
        "NEXTCLOUD_LIVENESS_REPORT": "autoscaling" if s.builder == "aws" else "log",
    }
    for name, value in variables.items():
        if "\n" in value:  # pragma: no cover - validators already refuse these
            raise ValueError(f"{name} contains a newline")
    return sorted(variables.items())


# Where install-db-ca.sh puts the database's CA bundle; nextcloud.service mounts the directory at the same path.
DB_CA_PATH = "/etc/nextcloud/tls/db-ca.pem"
# RDS Proxy presents an ACM certificate (Amazon Trust Services roots): the container's own Debian CA store.
PUBLIC_CA_PATH = "/etc/ssl/certs/ca-certificates.crt"


def database_tls_environment(s: Settings) -> dict[str, str]:
    """verify-full with the baked CA bundle when the settings pin one (required for AWS), for every PostgreSQL client
    of the node: Nextcloud's pgsql_ssl and the cluster init, /readyz and cron (cluster.config.php, lib.php). Through
    RDS Proxy (stack.database.proxy) the node talks to the proxy, whose certificate ACM issued."""
    if not s.database.ca_bundle_sha256:
        return {}
    rootcert = PUBLIC_CA_PATH if s.stack.database.proxy else DB_CA_PATH
    return {"NEXTCLOUD_DB_SSLMODE": "verify-full", "NEXTCLOUD_DB_SSLROOTCERT": rootcert}


def web_tier_environment(s: Settings) -> dict[str, str]:
    """Apache workers and PHP's memory_limit for the settings' instance type (render/capacity.py).

    They are ceilings: at boot nextcloud-size-workers takes the smaller of each and what the machine's own memory
    holds, so an image baked for a larger type never overcommits a smaller one. For a type whose memory the table
    does not know, the ceilings are web.max_workers (or capacity.MAX_WORKERS) and the image's own 512M.
    """
    sizing = capacity.instance_sizing(s)
    workers = sizing.workers if sizing else (s.web.max_workers or capacity.MAX_WORKERS)
    limit = sizing.php_memory_limit if sizing else f"{capacity.PHP_MEMORY_LIMIT_CEILING_MIB}M"
    return {
        "NEXTCLOUD_APACHE_MAX_WORKERS": str(workers),
        "NEXTCLOUD_WORKER_MEMORY_MB": str(s.web.worker_memory_mb),
        "PHP_MEMORY_LIMIT": limit,
    }


def instance_document(s: Settings) -> dict[str, object]:
    """What the instance learns at boot: its role and where its secrets are (contract with resolve-secrets)."""
    secrets = {}
    for field, variable in SECRET_VARIABLES.items():
        ref = getattr(s.secrets, field)
        secret_ref_kind(ref)
        secrets[variable] = ref
    return {
        "schema": 1,
        "environment": s.name,
        "region": s.region,
        "role": {"allow_install": s.cluster.allow_install, "allow_upgrade": s.cluster.allow_upgrade},
        "secrets": dict(sorted(secrets.items())),
    }


def render_user_data(s: Settings) -> str:
    """The launch-template user data (cloud-config) for settings ``s``."""
    doc = json.dumps(instance_document(s), indent=2, sort_keys=True)
    return _jinja().get_template("user-data.yaml.j2").render(environment=s.name, instance_json=doc)


def render_nextcloud_env(s: Settings) -> str:
    return _jinja().get_template("nextcloud.env.j2").render(variables=nextcloud_environment(s))


def render_packer_vars(s: Settings, resolved: ResolvedInputs | None = None) -> str:
    return json.dumps(packer_variables(s, resolved), indent=2, sort_keys=True) + "\n"


def _ignored(rel: Path) -> bool:
    return any(part in _IGNORED_PARTS for part in rel.parts) or rel.name.endswith(_IGNORED_SUFFIXES)


def image_upload_files(root: Path) -> list[Path]:
    """IMAGE_UPLOAD: the files under image/ that Packer uploads into the build VM (documentation excluded), sorted."""
    base = root / IMAGE_DIR
    files = [
        p.relative_to(base) for p in base.rglob("*")
        if p.is_file() and not _ignored(p.relative_to(root)) and not p.name.startswith("README")
    ]
    return sorted(files, key=lambda p: p.as_posix())


def fingerprinted_files(root: Path) -> list[Path]:
    """Every file the fingerprint hashes (relative to ``root``): IMAGE_UPLOAD and the Packer template."""
    files = [Path(IMAGE_DIR) / rel for rel in image_upload_files(root)]
    files += [p.relative_to(root) for p in (root / PACKER_DIR).glob(PACKER_TEMPLATES) if p.is_file()]
    return sorted(files, key=lambda p: p.as_posix())


def stage_image_upload(root: Path, dest: Path) -> list[Path]:
    """Copy IMAGE_UPLOAD into ``dest`` (emptied first), keeping the executable bit: what Packer uploads, exactly."""
    if dest.exists():
        shutil.rmtree(dest)
    copied = []
    for rel in image_upload_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / IMAGE_DIR / rel, target)
        target.chmod(0o755 if os.access(root / IMAGE_DIR / rel, os.X_OK) else 0o644)
        copied.append(target)
    return copied


def fingerprint(root: Path, build_inputs: dict[str, str]) -> str:
    """One digest over what reaches the artifact (see the comment at the top of this module): the fingerprinted
    files (path, executable bit, content) and the rendered build inputs."""
    h = hashlib.sha256()
    h.update(f"nextcloud-image fingerprint {FINGERPRINT_VERSION}\n".encode())
    for rel in fingerprinted_files(root):
        path = root / rel
        mode = "x" if os.access(path, os.X_OK) else "-"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        h.update(f"file {rel.as_posix()} {mode} {digest}\n".encode())
    for name in sorted(build_inputs):
        digest = hashlib.sha256(build_inputs[name].encode()).hexdigest()
        h.update(f"input {name} {digest}\n".encode())
    return h.hexdigest()


def render_all(root: Path, s: Settings, resolved: ResolvedInputs | None = None) -> dict[str, str]:
    """Every output file of ``inv render`` (name → text), computed in memory.

    ``resolved`` carries what infra/ looked up before a bake (the exact base image); without it the fingerprint
    covers the settings and the trees only, which is what ``inv render`` shows offline.
    """
    build_inputs = {
        PACKER_VARS: render_packer_vars(s, resolved),
        NEXTCLOUD_ENV: render_nextcloud_env(s),
        SECRET_REFERENCES: render_contract(),
    }
    return {
        **build_inputs,
        USER_DATA: render_user_data(s),
        FINGERPRINT: fingerprint(root, build_inputs) + "\n",
    }


def write_outputs(out_dir: Path, files: dict[str, str]) -> list[Path]:
    """Write rendered files atomically (temp + rename); user data is 0600 because it may hold secret values."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sorted(files):
        target = out_dir / name
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(files[name])
            os.chmod(tmp, 0o600 if name == USER_DATA else 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
