"""The image's ONE cluster config (image/nextcloud/config/cluster.config.php), run with php-cli under several
environments; the resulting $CONFIG is what every node's Nextcloud sees. Also: Nextcloud's merge order as the
readiness endpoint reproduces it, and lint of every PHP file and shell script of the image overlay.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CONFIG = ROOT / "image" / "nextcloud" / "config" / "cluster.config.php"
LIB = ROOT / "image" / "nextcloud" / "cluster" / "lib.php"

BASE_ENV = {
    "NEXTCLOUD_INSTANCEID": "ocq1w2e3r4t5",
    "NEXTCLOUD_PASSWORDSALT": "salt-value-1234567890",
    "NEXTCLOUD_SECRET": "secret-value-1234567890",
    "NEXTCLOUD_DB_HOST": "db.internal",
    "NEXTCLOUD_DB_PORT": "5432",
    "NEXTCLOUD_DB_NAME": "nextcloud",
    "NEXTCLOUD_DB_USER": "nextcloud",
    "NEXTCLOUD_DB_PASSWORD": "db-pass",
    "NEXTCLOUD_REDIS_HOST": "cache.internal",
    "NEXTCLOUD_REDIS_PORT": "6379",
    "NEXTCLOUD_REDIS_TLS": "0",
    "NEXTCLOUD_TRUSTED_DOMAINS": "cloud.example.com  www.cloud.example.com",
    "NEXTCLOUD_TRUSTED_PROXIES": "10.0.0.0/16 10.1.0.0/16",
    "NEXTCLOUD_S3_BUCKET": "",
    "NEXTCLOUD_S3_REGION": "eu-west-1",
    "NEXTCLOUD_S3_ENDPOINT": "",
    "NEXTCLOUD_S3_PATH_STYLE": "0",
    "NEXTCLOUD_OVERWRITE_HOST": "cloud.example.com",
    "NEXTCLOUD_OVERWRITE_PROTOCOL": "https",
    "NEXTCLOUD_OVERWRITE_CLI_URL": "https://cloud.example.com",
}
REQUIRED = ["NEXTCLOUD_INSTANCEID", "NEXTCLOUD_PASSWORDSALT", "NEXTCLOUD_SECRET", "NEXTCLOUD_DB_HOST",
            "NEXTCLOUD_DB_NAME", "NEXTCLOUD_DB_USER", "NEXTCLOUD_DB_PASSWORD", "NEXTCLOUD_REDIS_HOST",
            "NEXTCLOUD_TRUSTED_DOMAINS"]


def run_config(tmp_path: Path, **changes: str | None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_CLUSTER_STATE_DIR": str(tmp_path / "state"), **BASE_ENV}
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    code = f"include '{CLUSTER_CONFIG}'; echo json_encode($CONFIG);"
    return subprocess.run(["php", "-r", code], env=env, capture_output=True, text=True, timeout=20)


def config(tmp_path: Path, **changes: str | None) -> dict:
    r = run_config(tmp_path, **changes)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


def test_cluster_settings_from_environment(tmp_path):
    c = config(tmp_path)
    assert (c["instanceid"], c["passwordsalt"], c["secret"]) == (
        "ocq1w2e3r4t5", "salt-value-1234567890", "secret-value-1234567890")
    # Nextcloud reads the port only from dbhost at run time (ConnectionFactory::splitHostFromPortAndSocket).
    assert {k: c.get(k) for k in ("dbtype", "dbhost", "dbport", "dbname", "dbuser", "dbpassword", "dbtableprefix")} == {
        "dbtype": "pgsql", "dbhost": "db.internal:5432", "dbport": None, "dbname": "nextcloud", "dbuser": "nextcloud",
        "dbpassword": "db-pass", "dbtableprefix": "oc_"}
    assert c["setup_create_db_user"] is False
    assert c["memcache.local"] == "\\OC\\Memcache\\APCu"
    assert c["memcache.distributed"] == c["memcache.locking"] == "\\OC\\Memcache\\Redis"
    assert c["redis"] == {"host": "cache.internal", "port": 6379, "timeout": 1.5, "read_timeout": 1.5, "dbindex": 0}
    assert c["trusted_domains"] == ["cloud.example.com", "www.cloud.example.com"]
    assert c["trusted_proxies"] == ["10.0.0.0/16", "10.1.0.0/16"]
    assert c["overwritehost"] == "cloud.example.com"
    assert c["overwriteprotocol"] == "https"
    assert c["overwrite.cli.url"] == "https://cloud.example.com"
    # Nextcloud's JSON log entries go to syslog (the host journal's socket), tagged, never to a file.
    assert (c["log_type"], c["syslog_tag"], c["loglevel"]) == ("syslog", "nextcloud-app", 2)
    assert "logfile" not in c
    assert c["appstoreenabled"] is False
    assert c["upgrade.disable-web"] is True
    assert "htaccess.RewriteBase" not in c  # rewrite rules would exist on the installer node only
    assert c["config_is_read_only"] is True
    assert c["installed"] is False and "version" not in c  # nothing known until the cluster init says so
    assert "objectstore" not in c  # empty bucket: local data directory
    assert c["datadirectory"] == "/var/www/html/data"


def test_s3_without_keys_uses_the_instance_role(tmp_path):
    c = config(tmp_path, NEXTCLOUD_S3_BUCKET="nc-primary")
    assert c["objectstore"] == {
        "class": "\\OC\\Files\\ObjectStore\\S3",
        "arguments": {"bucket": "nc-primary", "region": "eu-west-1", "autocreate": False, "use_ssl": True,
                      "use_path_style": False},
    }


def test_s3_with_keys_endpoint_and_path_style(tmp_path):
    c = config(tmp_path, NEXTCLOUD_S3_BUCKET="nc-primary", NEXTCLOUD_S3_ENDPOINT="http://10.0.2.2:5000",
               NEXTCLOUD_S3_PATH_STYLE="1", NEXTCLOUD_S3_KEY="AKIDEXAMPLE", NEXTCLOUD_S3_SECRET="s3-secret")
    args = c["objectstore"]["arguments"]
    assert args == {"bucket": "nc-primary", "region": "eu-west-1", "autocreate": False, "use_ssl": False,
                    "use_path_style": True, "hostname": "10.0.2.2", "port": 5000, "key": "AKIDEXAMPLE",
                    "secret": "s3-secret"}


def test_s3_https_endpoint_default_port(tmp_path):
    args = config(tmp_path, NEXTCLOUD_S3_BUCKET="b", NEXTCLOUD_S3_ENDPOINT="https://s3.example.com")["objectstore"][
        "arguments"]
    assert (args["hostname"], args["port"], args["use_ssl"]) == ("s3.example.com", 443, True)


def test_redis_tls_with_password(tmp_path):
    c = config(tmp_path, NEXTCLOUD_REDIS_TLS="1", NEXTCLOUD_REDIS_PASSWORD="r-pass", NEXTCLOUD_REDIS_PORT="6380")
    assert c["redis"]["host"] == "tls://cache.internal"
    assert c["redis"]["port"] == 6380
    assert c["redis"]["password"] == "r-pass"
    assert c["redis"]["ssl_context"] == {"verify_peer": True, "verify_peer_name": True}


def test_installed_and_version_come_from_cluster_state(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.json").write_text(json.dumps(
        {"phase": "ready", "installed": True, "version": "29.0.7.1"}))
    c = config(tmp_path)
    assert (c["installed"], c["version"], c["config_is_read_only"]) == (True, "29.0.7.1", True)


def test_only_the_inits_occ_run_may_write_config(tmp_path):
    c = config(tmp_path, NEXTCLOUD_CLUSTER_OCC_RUN="1")
    assert c["config_is_read_only"] is False
    assert "installed" not in c and "version" not in c  # occ manages them in its scratch config


@pytest.mark.parametrize("name", REQUIRED)
def test_missing_required_variable_fails_naming_it(tmp_path, name):
    r = run_config(tmp_path, **{name: None})
    assert r.returncode != 0
    assert f"{name} is not set" in r.stderr + r.stdout
    assert "db-pass" not in r.stderr + r.stdout


def test_all_problems_reported_at_once(tmp_path):
    r = run_config(tmp_path, NEXTCLOUD_DB_HOST="", NEXTCLOUD_SECRET=None)
    out = r.stderr + r.stdout
    assert r.returncode != 0 and "NEXTCLOUD_DB_HOST is not set" in out and "NEXTCLOUD_SECRET is not set" in out


@pytest.mark.parametrize(("changes", "message"), [
    ({"NEXTCLOUD_DB_PORT": "54x"}, "NEXTCLOUD_DB_PORT must be a TCP port number"),
    ({"NEXTCLOUD_REDIS_TLS": "yes"}, "NEXTCLOUD_REDIS_TLS must be 0 or 1"),
    ({"NEXTCLOUD_LOGLEVEL": "debug"}, "NEXTCLOUD_LOGLEVEL must be 0 (debug) to 4 (fatal)"),
    ({"NEXTCLOUD_S3_BUCKET": "b", "NEXTCLOUD_S3_REGION": ""}, "NEXTCLOUD_S3_REGION is not set"),
    ({"NEXTCLOUD_S3_KEY": "AKID"}, "NEXTCLOUD_S3_KEY and NEXTCLOUD_S3_SECRET must be set together"),
    ({"NEXTCLOUD_S3_BUCKET": "b", "NEXTCLOUD_S3_ENDPOINT": "s3.example.com"}, "NEXTCLOUD_S3_ENDPOINT must be"),
    ({"NEXTCLOUD_INSTANCEID": "oc-1"}, "NEXTCLOUD_INSTANCEID must be"),
    ({"NEXTCLOUD_OVERWRITE_PROTOCOL": "ftp"}, "NEXTCLOUD_OVERWRITE_PROTOCOL must be http or https"),
], ids=["db-port", "redis-tls", "loglevel", "s3-region", "s3-key-alone", "s3-endpoint", "instanceid", "protocol"])
def test_malformed_value_fails_naming_it(tmp_path, changes, message):
    r = run_config(tmp_path, **changes)
    assert r.returncode != 0 and message in r.stderr + r.stdout


def test_readiness_loads_config_like_nextcloud(tmp_path):
    """config.php first, then *.config.php in natural order (later wins), then NC_<key> overrides."""
    d = tmp_path / "config"
    d.mkdir()
    (d / "config.php").write_text("<?php $CONFIG = ['a' => 'config.php', 'b' => 'config.php', 'c' => 1];")
    (d / "b2.config.php").write_text("<?php $CONFIG = ['a' => 'b2', 'b' => 'b2'];")
    (d / "b10.config.php").write_text("<?php $CONFIG = ['a' => 'b10'];")
    code = f"require '{LIB}'; echo json_encode(\\NextcloudCluster\\loadConfig('{d}'));"
    r = subprocess.run(["php", "-r", code], env={"PATH": "/usr/bin:/bin", "NC_c": "from-env"},
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == {"a": "b10", "b": "b2", "c": "from-env"}


STANDIN_TREE = ROOT / "infra" / "localtwin" / "standin" / "nextcloud"
PHP_FILES = sorted([*(ROOT / "image" / "nextcloud").rglob("*.php"), *STANDIN_TREE.rglob("*.php"), STANDIN_TREE / "occ",
                    *(ROOT / "tests" / "fixtures" / "nextcloud").rglob("*.php")])
SHELL_SCRIPTS = [*sorted((ROOT / "image/nextcloud/bin").iterdir()), ROOT / "image/nextcloud/cluster/env-file.sh"]


@pytest.mark.parametrize("path", PHP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_php_lint(path):
    r = subprocess.run(["php", "-l", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
@pytest.mark.parametrize("path", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_shellcheck(path):
    r = subprocess.run(["shellcheck", "--shell=bash", "--external-sources", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


INIT = ROOT / "image" / "nextcloud" / "cluster" / "cluster-init.php"


@pytest.mark.parametrize(("tls", "password", "expected_path"), [
    ("0", "", "tcp://cache.internal:6379"),
    ("1", "p@ss w=rd&x", "tls://cache.internal:6379?auth=p%40ss%20w%3Drd%26x"),
], ids=["plain", "tls-password"])
def test_php_session_ini_for_redis(tmp_path, tls, password, expected_path):
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_CLUSTER_STATE_DIR": str(tmp_path),
           "NEXTCLOUD_REDIS_HOST": "cache.internal", "NEXTCLOUD_REDIS_PORT": "6379", "NEXTCLOUD_REDIS_TLS": tls,
           "NEXTCLOUD_REDIS_PASSWORD": password}
    subprocess.run(["php", str(INIT), "--write-php-ini"], env=env, check=True, timeout=20)
    ini = tmp_path / "php" / "zz-nextcloud-cluster-session.ini"
    assert ini.stat().st_mode & 0o777 == 0o600  # holds the Redis password
    assert (tmp_path / "php").stat().st_mode & 0o777 == 0o700
    # PHP itself must read it back as intended (quoting, URL encoding).
    code = "echo json_encode([ini_get('session.save_handler'), ini_get('session.save_path')]);"
    r = subprocess.run(["php", "-r", code], env={"PATH": "/usr/bin:/bin", "PHP_INI_SCAN_DIR": f":{tmp_path}/php"},
                       capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == ["redis", expected_path]


@pytest.mark.parametrize(("host", "port", "expected"), [
    ("db.internal", "55432", "db.internal:55432"),
    ("10.0.2.2", "5433", "10.0.2.2:5433"),
    ("fd00::5", "5432", "[fd00::5]:5432"),
])
def test_the_database_port_rides_in_dbhost(tmp_path, host, port, expected):
    c = config(tmp_path, NEXTCLOUD_DB_HOST=host, NEXTCLOUD_DB_PORT=port)
    assert c["dbhost"] == expected and "dbport" not in c


def test_serverid_comes_from_the_cluster_state(tmp_path):
    (tmp_path / "state").mkdir()
    state = {"phase": "ready", "installed": True, "version": "34.0.1.2", "serverid": 17, "node": "web-1/ab"}
    (tmp_path / "state" / "state.json").write_text(json.dumps(state))
    assert config(tmp_path)["serverid"] == 17
    (tmp_path / "state" / "state.json").write_text(json.dumps({**state, "serverid": None}))
    assert "serverid" not in config(tmp_path), "no serverid of our own: Nextcloud would hash the host name"


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("1", True), ("0", False)])
def test_offline_nodes_tell_nextcloud(tmp_path, value, expected):
    # Nextcloud's has_internet_connection: false keeps cron.php from waiting minutes on the update check offline.
    assert config(tmp_path, NEXTCLOUD_HAS_INTERNET=value)["has_internet_connection"] is expected


def test_database_tls_verify_full_with_the_ca_bundle(tmp_path):
    bundle = tmp_path / "rds-ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    c = config(tmp_path, NEXTCLOUD_DB_SSLMODE="verify-full", NEXTCLOUD_DB_SSLROOTCERT=str(bundle))
    # Nextcloud's own key (lib/private/DB/ConnectionFactory.php reads pgsql_ssl's mode and rootcert).
    assert c["pgsql_ssl"] == {"mode": "verify-full", "rootcert": str(bundle)}
    assert "pgsql_ssl" not in config(tmp_path)  # unset: libpq's default, as before
    assert config(tmp_path, NEXTCLOUD_DB_SSLMODE="require")["pgsql_ssl"] == {"mode": "require", "rootcert": ""}


@pytest.mark.parametrize(("changes", "message"), [
    ({"NEXTCLOUD_DB_SSLMODE": "verify-full"}, "NEXTCLOUD_DB_SSLROOTCERT is not set (required with "
                                              "NEXTCLOUD_DB_SSLMODE=verify-full"),
    ({"NEXTCLOUD_DB_SSLMODE": "verify_full"}, "NEXTCLOUD_DB_SSLMODE must be one of libpq's sslmode values"),
    ({"NEXTCLOUD_DB_SSLMODE": "verify-full", "NEXTCLOUD_DB_SSLROOTCERT": "/nonexistent/ca.pem"},
     "NEXTCLOUD_DB_SSLROOTCERT names /nonexistent/ca.pem, which is not a readable file"),
    ({"NEXTCLOUD_DB_SSLMODE": "verify-full", "NEXTCLOUD_DB_SSLROOTCERT": "/etc/x y.pem"},
     "NEXTCLOUD_DB_SSLROOTCERT must be an absolute path"),
    ({"NEXTCLOUD_DB_SSLMODE": "verify-full", "NEXTCLOUD_DB_SSLROOTCERT": "/etc/ca.pem;sslmode=disable"},
     "NEXTCLOUD_DB_SSLROOTCERT must be an absolute path"),
    ({"NEXTCLOUD_DB_SSLROOTCERT": "/etc/ssl/certs/ca-certificates.crt"}, "set without NEXTCLOUD_DB_SSLMODE"),
])
def test_database_tls_settings_that_would_not_verify_are_refused(tmp_path, changes, message):
    r = run_config(tmp_path, **changes)
    assert r.returncode != 0 and message in r.stderr + r.stdout
