"""verify-full to PostgreSQL on AWS: the settings pin the RDS CA bundle's sha256, render turns it into the bake's
inputs and the container's environment, the bake installs the bundle only if it is that file, and the unit hands it
to the container at the path the environment names."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from infra.localtwin.services.tls import make_server_certificates
from render.outputs import DB_CA_PATH, nextcloud_environment, packer_variables
from render.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "image" / "scripts" / "install-db-ca.sh"
GLOBAL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"
PIN = "ab" * 32


def settings(env: str, **overrides):
    return load_settings(ROOT, env, environ={}, overrides=overrides).settings


def test_aws_uses_verify_full_with_the_baked_bundle_for_every_client():
    s = settings("example", **{"database.ca_bundle_sha256": PIN})
    env = dict(nextcloud_environment(s))
    assert env["NEXTCLOUD_DB_SSLMODE"] == "verify-full"
    assert env["NEXTCLOUD_DB_SSLROOTCERT"] == DB_CA_PATH == "/etc/nextcloud/tls/db-ca.pem"
    variables = packer_variables(s)
    assert (variables["db_ca_bundle_url"], variables["db_ca_bundle_sha256"]) == (GLOBAL, PIN)
    regional = "https://truststore.pki.rds.amazonaws.com/eu-central-1/eu-central-1-bundle.pem"
    s = settings("example", **{"database.ca_bundle_sha256": PIN, "database.ca_bundle_url": regional})
    assert packer_variables(s)["db_ca_bundle_url"] == regional


def test_through_rds_proxy_the_nodes_trust_the_public_roots_the_proxys_certificate_chains_to():
    s = settings("example", **{"database.ca_bundle_sha256": PIN, "stack.database.proxy": True})
    env = dict(nextcloud_environment(s))
    assert (env["NEXTCLOUD_DB_SSLMODE"], env["NEXTCLOUD_DB_SSLROOTCERT"]) == (
        "verify-full", "/etc/ssl/certs/ca-certificates.crt")


def test_a_new_bundle_is_a_new_image():
    from render.outputs import render_all

    one = render_all(ROOT, settings("example", **{"database.ca_bundle_sha256": PIN}))["fingerprint"]
    two = render_all(ROOT, settings("example", **{"database.ca_bundle_sha256": "cd" * 32}))["fingerprint"]
    assert one != two


def test_aws_without_a_pinned_bundle_is_refused_naming_the_key():
    with pytest.raises(SettingsError) as exc:
        settings("example", **{"database.ca_bundle_sha256": None})
    assert "database.ca_bundle_sha256" in str(exc.value) and "sha256sum" in str(exc.value)


@pytest.mark.parametrize(("key", "value"), [
    ("database.ca_bundle_sha256", "AB" * 32), ("database.ca_bundle_sha256", "ab" * 31),
    ("database.ca_bundle_url", "http://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"),
    ("database.ca_bundle_url", GLOBAL + " --output /etc/passwd"),
])
def test_a_malformed_pin_or_url_is_refused_naming_the_key(key, value):
    with pytest.raises(SettingsError) as exc:
        settings("example", **{key: value})
    assert key in str(exc.value)


def test_the_local_twin_has_no_bundle_and_leaves_libpq_its_default():
    s = settings("local")
    assert not {"NEXTCLOUD_DB_SSLMODE", "NEXTCLOUD_DB_SSLROOTCERT"} & dict(nextcloud_environment(s)).keys()
    assert (packer_variables(s)["db_ca_bundle_url"], packer_variables(s)["db_ca_bundle_sha256"]) == ("", "")


def test_the_unit_mounts_the_bundles_directory_read_only_at_the_same_path():
    unit = (ROOT / "image" / "rootfs" / "etc" / "systemd" / "system" / "nextcloud.service").read_text()
    directory = os.path.dirname(DB_CA_PATH)
    assert f"-v {directory}:{directory}:ro" in unit


def test_the_template_passes_the_pin_to_the_script_after_curl_is_installed():
    template = (ROOT / "packer" / "nextcloud.pkr.hcl").read_text()
    assert '"DB_CA_URL=${var.db_ca_bundle_url}"' in template and '"DB_CA_SHA256=${var.db_ca_bundle_sha256}"' in template
    assert template.index("install-os-packages.sh") < template.index("install-db-ca.sh") < template.index(
        "install-units.sh")
    assert 'DB_CA_DIR' not in template  # the script's default is the path the environment names


# ---- the bake's script, with curl replaced by a copy of a local file ----

@pytest.fixture
def bake(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_curl = bin_dir / "curl"
    # curl ... --output FILE URL: copy the file the test served as URL's content.
    fake_curl.write_text('#!/usr/bin/env bash\nout=""\nwhile (($#)); do [[ $1 == --output ]] && { out=$2; shift; }; '
                         'shift; done\ncp "$SERVED" "$out"\n')
    fake_curl.chmod(0o755)

    def run(content: bytes, pin: str | None = None):
        served = tmp_path / "served.pem"
        served.write_bytes(content)
        pin = hashlib.sha256(content).hexdigest() if pin is None else pin
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SERVED": str(served),
               "DB_CA_URL": GLOBAL, "DB_CA_SHA256": pin, "DB_CA_DIR": str(tmp_path / "tls")}
        return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True)

    return run


def bundle(tmp_path: Path) -> bytes:
    """Two throwaway CA certificates, as a bundle of several roots."""
    return b"".join(make_server_certificates(tmp_path / f"ca{i}").ca.read_bytes() for i in (1, 2))


def test_the_bake_installs_the_pinned_bundle(bake, tmp_path):
    content = bundle(tmp_path)
    proc = bake(content)
    assert proc.returncode == 0, proc.stderr
    installed = tmp_path / "tls" / "db-ca.pem"
    assert installed.read_bytes() == content and (installed.stat().st_mode & 0o777) == 0o644
    assert "2 certificates" in proc.stdout


def test_the_bake_refuses_a_bundle_with_another_checksum(bake, tmp_path):
    proc = bake(bundle(tmp_path), pin="ab" * 32)
    assert proc.returncode == 1
    assert "database.ca_bundle_sha256" in proc.stderr and "ab" * 32 in proc.stderr
    assert not (tmp_path / "tls" / "db-ca.pem").exists()


@pytest.mark.parametrize("content", [
    b"<html>Access denied</html>\n",
    "PRIVATE_KEY_PLACEHOLDER",
    b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
], ids=["not-pem", "private-key", "garbage-certificate"])
def test_the_bake_refuses_what_is_not_a_bundle_of_certificates(bake, tmp_path, content):
    if content == "PRIVATE_KEY_PLACEHOLDER":
        certs = make_server_certificates(tmp_path / "ca")
        content = certs.ca.read_bytes() + certs.key.read_bytes()
    proc = bake(content)
    assert proc.returncode == 1, proc.stdout
    assert "install-db-ca.sh" in proc.stderr
    assert not (tmp_path / "tls" / "db-ca.pem").exists()


def test_without_a_pin_the_bake_installs_nothing(bake, tmp_path):
    proc = bake(b"", pin="")
    assert proc.returncode == 0 and "nothing installed" in proc.stdout
    assert (tmp_path / "tls").is_dir() and not (tmp_path / "tls" / "db-ca.pem").exists()


# ---- inv bootstrap-db: the one-shot instance connects with verify-full too ----

def bootstrap_script():
    import importlib.machinery
    import importlib.util

    path = ROOT / "infra" / "stack" / "bootstrap" / "bootstrap-database"
    loader = importlib.machinery.SourceFileLoader("bootstrap_database_ca", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


OUTPUTS = {"DatabaseMasterSecretArn": "arn:m", "DatabasePasswordSecretArn": "arn:a", "DatabaseAddress": "db.example",
           "DatabasePort": "5432"}


def test_the_bootstrap_verifies_the_database_against_the_pinned_bundle():
    from infra.stack.bootstrap import bootstrap_config

    cfg = bootstrap_config(settings("example", **{"database.ca_bundle_sha256": PIN}), OUTPUTS)
    assert cfg["sslmode"] == "verify-full"
    assert (cfg["sslrootcert_url"], cfg["sslrootcert_sha256"]) == (GLOBAL, PIN)
    assert bootstrap_script().connect_options(cfg, "u", "p")["sslrootcert"] == cfg["sslrootcert"]


class _Response:
    def __init__(self, data: bytes):
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, limit: int) -> bytes:
        return self.data[:limit]


def test_the_bootstrap_writes_the_bundle_only_when_its_checksum_is_the_pin(tmp_path, monkeypatch):
    import urllib.request

    script = bootstrap_script()
    content = bundle(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _Response(content))
    target = tmp_path / "ca.pem"
    cfg = {"sslmode": "verify-full", "sslrootcert": str(target), "sslrootcert_url": GLOBAL,
           "sslrootcert_sha256": "ab" * 32}
    with pytest.raises(script.BadConfig, match="database.ca_bundle_sha256"):
        script.fetch_rootcert(cfg)
    assert not target.exists()
    script.fetch_rootcert(cfg | {"sslrootcert_sha256": hashlib.sha256(content).hexdigest()})
    assert target.read_bytes() == content
