"""verify-full to PostgreSQL, against a real server speaking TLS: the cluster config's pgsql_ssl as the image's own
pgConnect (cluster init, /readyz) uses it, and the database bootstrap's connection.

The server's certificate is signed by a throwaway CA and names ``localhost`` only (as an RDS certificate names the
instance's endpoint): verify-full must connect by that name with that CA, and refuse another name or another CA.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import secrets
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from infra.localtwin.instance import free_port
from infra.localtwin.services import ThrowawayPostgres

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = ROOT / "image" / "nextcloud" / "config" / "cluster.config.php"
LIB = ROOT / "image" / "nextcloud" / "cluster" / "lib.php"
BOOTSTRAP = ROOT / "infra" / "stack" / "bootstrap" / "bootstrap-database"
PASSWORD = "tls-" + secrets.token_hex(8)


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
             "-keyout", f"{name}.key", "-out", f"{name}.crt")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """PostgreSQL with ssl=on and a certificate for localhost (no IP in it); the CA that signed it and another."""
    d = tmp_path_factory.mktemp("pg-tls")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName = DNS:localhost\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.crt")
    with ThrowawayPostgres(free_port(), PASSWORD) as server:
        server.start()
        for name in ("server.crt", "server.key"):
            target = server.datadir / name
            shutil.copy(d / name, target)
            target.chmod(0o600)
            shutil.chown(target, "postgres", "postgres")
        for statement in ("ALTER SYSTEM SET ssl = on", "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
                          "ALTER SYSTEM SET ssl_key_file = 'server.key'", "SELECT pg_reload_conf()"):
            server.psql(statement, dbname="postgres")
        yield server, d


def _php_connect(server: ThrowawayPostgres, host: str, rootcert: Path, state: Path) -> subprocess.CompletedProcess:
    """cluster.config.php from the environment, then lib.php's pgConnect with the $CONFIG it made."""
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_CLUSTER_STATE_DIR": str(state),
           "NEXTCLOUD_INSTANCEID": "octls12345", "NEXTCLOUD_PASSWORDSALT": "s", "NEXTCLOUD_SECRET": "t",
           "NEXTCLOUD_DB_HOST": host, "NEXTCLOUD_DB_PORT": str(server.port), "NEXTCLOUD_DB_NAME": server.dbname,
           "NEXTCLOUD_DB_USER": server.user, "NEXTCLOUD_DB_PASSWORD": server.password,
           "NEXTCLOUD_REDIS_HOST": "localhost", "NEXTCLOUD_TRUSTED_DOMAINS": "localhost",
           "NEXTCLOUD_DB_SSLMODE": "verify-full", "NEXTCLOUD_DB_SSLROOTCERT": str(rootcert)}
    code = (f"include '{CLUSTER_CONFIG}'; require '{LIB}'; "
            "try { $pdo = \\NextcloudCluster\\pgConnect($CONFIG); } catch (\\Throwable $e) { fwrite(STDERR, "
            "$e->getMessage()); exit(3); } "
            "echo json_encode($pdo->query('SELECT ssl, version FROM pg_stat_ssl "
            "WHERE pid = pg_backend_pid()')->fetch());")
    return subprocess.run(["php", "-r", code], env=env, capture_output=True, text=True, timeout=30)


def test_the_image_connects_with_verify_full_by_the_certificate_s_name_and_ca(tls, tmp_path):
    server, d = tls
    r = _php_connect(server, "localhost", d / "ca.crt", tmp_path)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert row["ssl"] is True and row["version"].startswith("TLS")


def test_the_image_refuses_a_name_the_certificate_does_not_carry(tls, tmp_path):
    server, d = tls
    r = _php_connect(server, "127.0.0.1", d / "ca.crt", tmp_path)
    assert r.returncode == 3 and "does not match host name" in r.stderr, r.stderr


def test_the_image_refuses_a_certificate_from_another_ca(tls, tmp_path):
    server, d = tls
    r = _php_connect(server, "localhost", d / "other-ca.crt", tmp_path)
    assert r.returncode == 3 and "certificate verify failed" in r.stderr, r.stderr


def _bootstrap():
    loader = importlib.machinery.SourceFileLoader("bootstrap_database_tls", str(BOOTSTRAP))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_the_bootstrap_verifies_the_database_when_given_the_ca_bundle(tls):
    server, d = tls
    script = _bootstrap()
    cfg = {"host": "localhost", "port": server.port, "sslrootcert": str(d / "ca.crt")}
    options = script.connect_options(cfg, server.user, server.password)
    assert options["sslmode"] == "verify-full"
    with psycopg.connect(dbname=server.dbname, **options) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(dbname=server.dbname, **script.connect_options(
            cfg | {"sslrootcert": str(d / "other-ca.crt")}, server.user, server.password)).close()
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        psycopg.connect(dbname=server.dbname, **script.connect_options(
            cfg | {"host": "127.0.0.1"}, server.user, server.password)).close()


def test_the_bootstrap_refuses_verify_full_without_a_bundle(tmp_path):
    script = _bootstrap()
    with pytest.raises(script.BadConfig, match="sslmode verify-full needs sslrootcert"):
        script.connect_options({"host": "db", "port": 5432, "sslmode": "verify-full"}, "u", "p")
    assert script.connect_options({"host": "db", "port": 5432}, "u", "p")["sslmode"] == "require"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({k: "x" for k in script.REQUIRED} | {"port": "5432", "sslmode": "verify-ca"}))
    out = subprocess.run([str(BOOTSTRAP), str(config)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "sslmode verify-ca needs sslrootcert" in out.stderr
