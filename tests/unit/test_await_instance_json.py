"""await-instance-json (nextcloud-instance-json.service): instance.json from cloud-init's local-stage cache.

Runs the very file baked into the image with Debian's python3 -I (as its unit runs it), against real cloud-init
(Debian 12's package, which .ci/setup installs and the image carries): the cache is written with cloud-init's own
pkl_store from its own NoCloud and Ec2Local datasource classes, and the expected file is the one cloud-init's own
write_files module writes from the same entry. Only the paths differ from an instance (temporary files).
"""

from __future__ import annotations

import base64
import gzip
import json
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "image/rootfs/usr/local/libexec/nextcloud-image/await-instance-json"
UNIT = REPO / "image/rootfs/etc/systemd/system/nextcloud-instance-json.service"
DEBIAN_PYTHON = "/usr/bin/python3"
CANARY = "canary-4f1d9e2b7c"
TARGET_IN_USER_DATA = "/etc/nextcloud/instance.json"

sys.path.insert(0, str(Path(__file__).parent))
from test_resolve_secrets import parse_unit, words  # noqa: E402


def _cloud_init_python() -> str:
    probe = subprocess.run([DEBIAN_PYTHON, "-I", "-c", "import cloudinit.sources"], capture_output=True, text=True)
    assert probe.returncode == 0, (
        f"Debian's cloud-init is needed by these tests (bash .ci/setup installs it): {probe.stderr.strip()[-300:]}")
    return DEBIAN_PYTHON


def user_data(instance_json: str, **entry_extra: object) -> str:
    entry = {"path": TARGET_IN_USER_DATA, "owner": "root:root", "permissions": "0600", "defer": False,
             "content": instance_json, **entry_extra}
    return "#cloud-config\n" + yaml.safe_dump({"write_files": [entry]}, sort_keys=False)


INSTANCE_JSON = json.dumps({"schema": 1, "environment": "local",
                            "secrets": {"NEXTCLOUD_DB_PASSWORD": f"literal:{CANARY}"}}, indent=2) + "\n"


class Boot:
    """The files one boot's local stage leaves: the cached datasource and /run/cloud-init's documents."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.target = root / "etc/nextcloud/instance.json"
        self.target.parent.mkdir(parents=True)
        self.cache = root / "var/lib/cloud/instance/obj.pkl"
        self.instance_data = root / "run/cloud-init/instance-data.json"
        self.status = root / "run/cloud-init/status.json"
        self.status.parent.mkdir(parents=True)

    def local_stage(self, raw_user_data: str | bytes, instance_id: str = "i-0abc", kind: str = "NoCloud",
                    boot_id: str | None = None) -> None:
        """What cloud-init's local stage writes, with cloud-init's own classes and pickler."""
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        data = raw_user_data if isinstance(raw_user_data, bytes) else raw_user_data.encode()
        module, cls = {"NoCloud": ("DataSourceNoCloud", "DataSourceNoCloud"),
                       "Ec2Local": ("DataSourceEc2", "DataSourceEc2Local")}[kind]
        code = textwrap.dedent(f"""
            import sys
            from cloudinit import helpers, sources
            from cloudinit.sources.{module} import {cls}
            paths = helpers.Paths({{"cloud_dir": sys.argv[2], "run_dir": sys.argv[2]}})
            ds = {cls}(sys_cfg={{}}, distro=None, paths=paths)
            ds.userdata_raw = open(sys.argv[3], "rb").read()
            ds.metadata = {{"instance-id": sys.argv[4]}}
            sources.pkl_store(ds, sys.argv[1])
        """)
        raw_file = self.root / "user-data.raw"
        raw_file.write_bytes(data)
        subprocess.run([_cloud_init_python(), "-I", "-c", code, str(self.cache), str(self.root), str(raw_file),
                        instance_id], check=True, capture_output=True)
        self.instance_data.write_text(json.dumps({"v1": {"instance_id": boot_id or instance_id}}))
        self.status.write_text(json.dumps({"v1": {"init-local": {"finished": 1.0}, "init": {"finished": None}}}))

    def network_stage_done(self) -> None:
        self.status.write_text(json.dumps({"v1": {"init-local": {"finished": 1.0}, "init": {"finished": 2.0}}}))

    def run(self, wait: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [_cloud_init_python(), "-I", str(SCRIPT), "--target", str(self.target), "--cache", str(self.cache),
             "--instance-data", str(self.instance_data), "--status", str(self.status), "--wait", str(wait),
             "--poll", "0.05"],
            capture_output=True, text=True, timeout=wait + 30,
        )


@pytest.fixture
def boot(tmp_path: Path) -> Boot:
    return Boot(tmp_path)


def cloud_init_writes(raw_user_data: str, where: Path) -> tuple[bytes, int]:
    """What cloud-init's own write_files module writes for the instance.json entry (path moved under ``where``)."""
    doc = yaml.safe_load(raw_user_data)
    # owner as names: cloud-init resolves them with getpwnam
    entry = dict(doc["write_files"][0], path=str(where / "instance.json"), owner="root:root")
    code = ("import json, sys\nfrom cloudinit.config.cc_write_files import write_files\n"
            "write_files('write_files', [json.loads(sys.argv[1])], 'root:root')\n")
    subprocess.run([_cloud_init_python(), "-I", "-c", code, json.dumps(entry, default=str)], check=True,
                   capture_output=True)
    written = where / "instance.json"
    return written.read_bytes(), stat.S_IMODE(written.stat().st_mode)


@pytest.mark.parametrize("kind", ["NoCloud", "Ec2Local"])  # the twin's datasource and EC2's local-stage one
def test_writes_what_cloud_init_would_write_from_the_local_stage_cache(boot, tmp_path, kind):
    raw = user_data(INSTANCE_JSON)
    boot.local_stage(raw, kind=kind)
    r = boot.run()
    assert r.returncode == 0, r.stderr
    (tmp_path / "by-cloud-init").mkdir()
    want_bytes, want_mode = cloud_init_writes(raw, tmp_path / "by-cloud-init")
    assert boot.target.read_bytes() == want_bytes
    assert stat.S_IMODE(boot.target.stat().st_mode) == want_mode == 0o600
    assert "local stage cached" in r.stderr
    assert CANARY not in r.stdout + r.stderr, "the script printed a value from instance.json"


@pytest.mark.parametrize("encoding", ["b64", "gzip+base64"])
def test_decodes_the_encodings_cloud_init_decodes(boot, tmp_path, encoding):
    blob = gzip.compress(INSTANCE_JSON.encode()) if encoding.startswith("gz") else INSTANCE_JSON.encode()
    raw = user_data(base64.b64encode(blob).decode(), encoding=encoding)
    boot.local_stage(raw)
    assert boot.run().returncode == 0
    (tmp_path / "by-cloud-init").mkdir()
    assert boot.target.read_bytes() == cloud_init_writes(raw, tmp_path / "by-cloud-init")[0] == INSTANCE_JSON.encode()


def test_gzipped_user_data_is_read_as_cloud_init_reads_it(boot):
    boot.local_stage(gzip.compress(user_data(INSTANCE_JSON).encode()))
    assert boot.run().returncode == 0
    assert boot.target.read_text() == INSTANCE_JSON


def test_an_existing_file_is_left_alone(boot):
    boot.target.write_text("kept\n")
    boot.local_stage(user_data(INSTANCE_JSON))
    r = boot.run()
    assert r.returncode == 0 and boot.target.read_text() == "kept\n", r.stderr


def test_a_cache_from_another_instance_is_not_used(boot):
    # A stale cache (e.g. an image baked without `cloud-init clean`) must never hand over another instance's file.
    boot.local_stage(user_data(INSTANCE_JSON), instance_id="i-old", boot_id="i-new")
    threading.Timer(1.0, boot.network_stage_done).start()
    r = boot.run()
    assert r.returncode == 0, r.stderr
    assert not boot.target.exists(), "instance.json was written from another instance's cached user data"
    assert "another instance" in r.stderr and "finished without writing" in r.stderr


def test_without_a_usable_cache_it_waits_for_cloud_init(boot):
    # MIME multipart user data is left to cloud-init: the script returns only once cloud-init wrote the file.
    mime = "Content-Type: multipart/mixed; boundary=x\nMIME-Version: 1.0\n\n--x\n--x--\n"
    boot.local_stage(mime)

    def cloud_init_network_stage() -> None:
        time.sleep(1.5)
        boot.target.write_text(INSTANCE_JSON)
        boot.network_stage_done()

    threading.Thread(target=cloud_init_network_stage).start()
    started = time.monotonic()
    r = boot.run()
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started >= 1.4, "returned before cloud-init wrote the file"
    assert "not plain #cloud-config" in r.stderr and "written by cloud-init" in r.stderr


def test_no_instance_in_the_user_data_ends_when_cloud_init_is_done(boot):
    # The bake's own boot: user data without instance.json. Nothing is written; the resolver is then skipped.
    boot.local_stage("#cloud-config\nssh_authorized_keys: [ssh-ed25519 AAAA]\n")
    boot.network_stage_done()
    r = boot.run()
    assert r.returncode == 0 and not boot.target.exists(), r.stderr
    assert "0 write_files entries" in r.stderr


def test_gives_up_when_cloud_init_never_finishes(boot):
    boot.local_stage("#cloud-config\n{}\n")
    r = boot.run(wait=1.0)
    assert r.returncode == 1 and "gave up" in r.stderr and not boot.target.exists()


def test_unit_runs_after_the_local_stage_only():
    unit = parse_unit(UNIT)
    after = set(words(unit, "Unit", "After"))
    assert "cloud-init-local.service" in after
    assert unit["Unit"]["DefaultDependencies"] == ["no"]
    assert not after & {"cloud-init.service", "network-online.target", "basic.target", "sysinit.target"}, after
    assert "nextcloud-secrets.service" in words(unit, "Unit", "Before")
    service = unit["Service"]
    assert service["Type"] == ["oneshot"] and service["TimeoutStartSec"] == ["infinity"]
    assert service["ExecStart"][0].startswith("/usr/local/libexec/nextcloud-image/await-instance-json ")
    assert service["ReadWritePaths"] == ["/etc/nextcloud"] and service["ProtectSystem"] == ["strict"]
