"""Secret delivery: the resolved secrets live in one root-only file on tmpfs and nowhere a reader could find them.

The canary values (NEXTCLOUD_TEST_CANARIES) are random values this boot was given as its secrets. They may
appear only in:

- /run/nextcloud/runtime.env: the one place the design puts resolved secrets (tmpfs, 0600 root);
- /etc/nextcloud/instance.json: the user data's write_files target. It holds secret *references*; only the
  local twin uses ``literal:`` references, so there the reference is the value. Root-only 0600;
- cloud-init's own copies of the user data (/var/lib/cloud/instances/<id>/user-data.txt[.i], cloud-config.txt,
  obj.pkl, /run/cloud-init/instance-data-sensitive.json). cloud-init writes them root-only (0600/0400); on
  EC2 root can read the same user data from IMDS at any time, so a root-only copy exposes nothing new.

Every such file must be root-owned and unreadable by group and others. Nothing else on the filesystem, nothing in
the journal, no process's command line and nothing in the artifact the instance was booted from may contain a canary.

The admin password is not resolved at boot: only the node that installs fetches it, on demand, and keeps it in
memory for the install (nextcloud-admin-password.socket). It is never in runtime.env.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json

import pytest
from image_suite_support import ON_DEMAND_SECRETS, decode_on_target

pytestmark = pytest.mark.secrets

RUNTIME_ENV = "/run/nextcloud/runtime.env"
ON_DEMAND = ON_DEMAND_SECRETS  # fetched only by the installing node, on demand; never written at boot
ALLOWED = (
    RUNTIME_ENV,
    "/etc/nextcloud/instance.json",
    "/var/lib/cloud/instances/*/user-data.txt",
    "/var/lib/cloud/instances/*/user-data.txt.i",
    "/var/lib/cloud/instances/*/cloud-config.txt",
    "/var/lib/cloud/instances/*/obj.pkl",
    "/run/cloud-init/instance-data-sensitive.json",
)
# Pseudo and device filesystems: not files anyone stores. Everything else, including /run (tmpfs), is searched.
SKIPPED_TOP = ("/proc", "/sys", "/dev")


def _allowed(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in ALLOWED)


@pytest.fixture(scope="module")
def canary_files(host, canaries) -> dict[str, set[str]]:
    """canary name -> files on the target that contain its value (one filesystem pass for all canaries)."""
    patterns = "\n".join(canaries.values())
    skip = " ".join(f"{d}" for d in SKIPPED_TOP)
    # grep -r does not follow symlinks below the start points; --devices=skip keeps it off sockets and FIFOs.
    listing = host.run(
        f'p={decode_on_target(patterns)}; for d in /* /.[!.]*; do case " {skip} " in *" $d "*) continue;; esac; '
        f'[ -e "$d" ] || continue; [ -L "$d" ] && continue; grep -rlsF --devices=skip -e "$p" "$d"; done; true'
    )
    candidates = [line for line in listing.stdout.splitlines() if line]
    found: dict[str, set[str]] = {name: set() for name in canaries}
    for name, value in canaries.items():
        if not candidates:
            break
        quoted = " ".join(f"'{c}'" for c in candidates)
        out = host.run(f"grep -lsF -e {decode_on_target(value)} {quoted}; true")
        found[name] = {line for line in out.stdout.splitlines() if line}
    return found


def test_runtime_env_is_root_only(host):
    d, f = host.file("/run/nextcloud"), host.file(RUNTIME_ENV)
    assert f.is_file, f"{RUNTIME_ENV} missing: nextcloud-secrets.service did not write it"
    owner_mode = (f.user, f.group, oct(f.mode))
    assert owner_mode == ("root", "root", "0o600"), f"{RUNTIME_ENV}: {owner_mode}, expected root:root 0600"
    assert (d.user, oct(d.mode)) == ("root", "0o700"), f"/run/nextcloud: {d.user} {oct(d.mode)}"


@pytest.mark.live
def test_runtime_env_on_tmpfs(host):
    fstype = host.check_output("findmnt -n -o FSTYPE --target /run/nextcloud")
    assert fstype == "tmpfs", f"/run/nextcloud is on {fstype}: resolved secrets would survive on disk"


def test_runtime_env_holds_every_secret(host, canaries):
    content = host.file(RUNTIME_ENV).content_string
    lines = set(content.splitlines())
    missing = [name for name, value in canaries.items() if name not in ON_DEMAND and f"{name}={value}" not in lines]
    assert not missing, f"{RUNTIME_ENV} lacks the boot's value for {missing}"


def test_admin_password_is_not_kept_at_boot(host, canaries):
    content = host.file(RUNTIME_ENV).content_string
    kept = [name for name in ON_DEMAND if name in canaries and canaries[name] in content]
    assert not kept, f"{RUNTIME_ENV} holds {kept}: only the installing node fetches it, for the install only"


def test_scan_finds_the_runtime_env_copy(canary_files, boot_canary_name):
    # Self-check of the search: a scan that finds nothing anywhere would pass every leak test below.
    canary_name = boot_canary_name
    assert RUNTIME_ENV in canary_files[canary_name], (
        f"the filesystem scan did not find {canary_name}'s value even in {RUNTIME_ENV}: the search is broken "
        "or the secret was never delivered"
    )


def test_canary_only_in_allowed_files(canary_files, canary_name):
    name = canary_name
    stray = sorted(p for p in canary_files[name] if not _allowed(p))
    assert not stray, f"{name}'s value found outside the allowed files: {stray}"


def test_files_holding_canaries_are_root_only(host, canary_files):
    holders = sorted(set().union(*canary_files.values()))
    readable = []
    for path in holders:
        f = host.file(path)
        if f.user != "root" or f.mode & 0o077:
            readable.append(f"{path} ({f.user}:{f.group} {oct(f.mode)})")
    assert not readable, f"files with secret values readable by non-root: {readable}"


def test_canary_not_in_journal(host, canaries, canary_name):
    value = canaries[canary_name]
    # Export format: every field of every entry (not just MESSAGE), uncompressed.
    out = host.run(f"journalctl --no-pager -o export 2>/dev/null | grep -acF -e {decode_on_target(value)}; true")
    count = int(out.stdout.strip() or 0)
    if count:
        entries = host.run(f"journalctl --no-pager -o json 2>/dev/null | grep -aF -e {decode_on_target(value)}; true")
        where = []
        for line in entries.stdout.splitlines()[:5]:
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                message = str(e.get("MESSAGE", "")).replace(value, "<" + canary_name + ">")
                where.append(f"{e.get('_SYSTEMD_UNIT') or e.get('SYSLOG_IDENTIFIER')}: {message[:160]}")
        pytest.fail(f"{canary_name}'s value appears in {count} journal line(s), e.g. {where}")


@pytest.mark.host_side
def test_canaries_not_in_artifact(artifact_view, canaries):
    hits = artifact_view.find({name: value.encode() for name, value in canaries.items()})
    leaked = {name: offsets[:5] for name, offsets in hits.items() if offsets}
    assert not leaked, f"secret values found in the artifact {artifact_view.path} at byte offsets {leaked}"


@pytest.mark.live
def test_canary_not_in_any_command_line(host, canaries):
    # /proc/<pid>/cmdline is readable by every local user. The patterns reach grep on its standard input (printf
    # is a shell builtin), so grep's own command line carries none of them.
    patterns = "\n".join(canaries.values())
    out = host.run(f"p={decode_on_target(patterns)}; printf '%s\\n' \"$p\" | grep -laF -f - /proc/[0-9]*/cmdline; true")
    holders = [line for line in out.stdout.splitlines() if line]
    described = []
    for path in holders:
        pid = path.split("/")[2]
        comm = host.run(f"cat /proc/{pid}/comm 2>/dev/null").stdout.strip()
        described.append(f"pid {pid} ({comm})")
    assert not holders, f"secret values in the command line of {described}"


@pytest.mark.live
def test_admin_password_fetched_only_by_the_node_that_installed(host):
    installs = int(host.run("journalctl --no-pager -o cat -u nextcloud.service | grep -c 'installed Nextcloud ' "
                            "|| true").stdout.strip() or 0)
    fetches = int(host.run("journalctl --no-pager -o cat -t nextcloud-admin-password | grep -c 'gave the admin "
                           "password' || true").stdout.strip() or 0)
    assert fetches == installs, (f"the admin password was handed out {fetches} time(s) on a node that installed "
                                 f"{installs} time(s): only the installing node may fetch it")


@pytest.mark.live
def test_the_node_that_installed_sealed_the_admin_password(host):
    """Once installed, the node asks the host to remove the secret's install tag (nextcloud-admin-seal.socket); the
    local twin's literal reference has no tag, and the host says so. A failure would be in this same journal."""
    installs = int(host.run("journalctl --no-pager -o cat -u nextcloud.service | grep -c 'installed Nextcloud ' "
                            "|| true").stdout.strip() or 0)
    seal_log = host.run("journalctl --no-pager -o cat -t nextcloud-admin-seal").stdout
    assert "error" not in seal_log, f"sealing failed: {seal_log.strip()}"
    if installs:
        sealed = [line for line in seal_log.splitlines() if "sealed the admin password" in line
                  or "nothing to seal" in line]
        assert sealed, "the node installed but never sealed the admin password (no line from nextcloud-admin-seal)"
