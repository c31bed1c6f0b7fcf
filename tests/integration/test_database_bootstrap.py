"""The database bootstrap's SQL (infra/stack/bootstrap/bootstrap-database) against a real PostgreSQL.

The master user is what RDS gives: CREATEROLE and CREATEDB but no SUPERUSER, owner of the database RDS created
(DBName). The application's role must come out restricted, owning its database and schema, and a second run must
repair (never widen) and keep working.
"""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import secrets
from pathlib import Path

import psycopg
import pytest

from infra.localtwin.instance import free_port
from infra.localtwin.services import ThrowawayPostgres

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "stack" / "bootstrap" / "bootstrap-database"
MASTER = "nextcloud_admin"
MASTER_PASSWORD = "master-" + secrets.token_hex(8)
APP_PASSWORD = "app-" + secrets.token_hex(12)


def _script():
    loader = importlib.machinery.SourceFileLoader("bootstrap_database", str(SCRIPT))
    spec = importlib.util.spec_from_loader("bootstrap_database", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rds_like():
    """PostgreSQL whose 'nextcloud' database belongs to an RDS-style master (CREATEROLE, CREATEDB, no SUPERUSER)."""
    with ThrowawayPostgres(free_port(), MASTER_PASSWORD, user=MASTER, dbname="nextcloud") as server:
        server.start()
        server.psql(f"ALTER ROLE {MASTER} NOSUPERUSER CREATEROLE CREATEDB", dbname="postgres")
        yield server


@pytest.fixture(autouse=True)
def fresh(rds_like):
    """Before each test: what RDS leaves, the master's own empty 'nextcloud' database and no application role."""
    for statement in ("DROP DATABASE IF EXISTS nextcloud WITH (FORCE)", "DROP DATABASE IF EXISTS other_app",
                      "DROP ROLE IF EXISTS nextcloud", "DROP ROLE IF EXISTS bystander",
                      f"CREATE DATABASE nextcloud OWNER {MASTER}"):
        rds_like.psql(statement, dbname="postgres")


def _as_master(server: ThrowawayPostgres, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host=server.host, port=server.port, dbname=dbname, user=MASTER, password=MASTER_PASSWORD,
                           autocommit=True)


def _run(server: ThrowawayPostgres, password: str = APP_PASSWORD) -> str:
    script = _script()
    with _as_master(server) as conn:
        outcome = script.bootstrap(conn, "nextcloud", "nextcloud", password)
    with _as_master(server, "nextcloud") as conn:
        script.own_public_schema(conn, "nextcloud")
    return outcome


def _attributes(server: ThrowawayPostgres) -> str:
    return server.psql(
        "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = 'nextcloud'", dbname="postgres"
    ).strip()


def test_the_role_is_created_restricted_and_owns_its_database(rds_like):
    assert _run(rds_like) == "role nextcloud created, database nextcloud handed over to it"
    assert _attributes(rds_like) == "f|f|f|f|f|t"
    assert rds_like.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'nextcloud'",
                         dbname="postgres").strip() == "nextcloud"
    assert rds_like.psql("SELECT nspowner::regrole FROM pg_namespace WHERE nspname = 'public'").strip() == "nextcloud"
    # The role can do what Nextcloud's installer does, with the password from the secret.
    with psycopg.connect(host=rds_like.host, port=rds_like.port, dbname="nextcloud", user="nextcloud",
                         password=APP_PASSWORD, autocommit=True) as app:
        app.execute("CREATE TABLE oc_probe (id int)")
        app.execute("DROP TABLE oc_probe")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("CREATE ROLE intruder")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("CREATE DATABASE other")
    # Other roles may not even connect to it.
    rds_like.psql("CREATE ROLE bystander LOGIN PASSWORD 'bystander-pw'", dbname="postgres")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        psycopg.connect(host=rds_like.host, port=rds_like.port, dbname="nextcloud", user="bystander",
                        password="bystander-pw").close()


def test_a_second_run_repairs_widened_attributes_and_keeps_the_data(rds_like):
    _run(rds_like)
    with psycopg.connect(host=rds_like.host, port=rds_like.port, dbname="nextcloud", user="nextcloud",
                         password=APP_PASSWORD, autocommit=True) as app:
        app.execute("CREATE TABLE IF NOT EXISTS oc_kept (id int)")
    rds_like.psql("ALTER ROLE nextcloud CREATEDB CREATEROLE", dbname="postgres")  # someone widened it by hand
    assert _run(rds_like).startswith("role nextcloud repaired")
    assert _attributes(rds_like) == "f|f|f|f|f|t"
    assert rds_like.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'oc_kept'").strip() == "1"


def test_a_missing_database_is_created_for_the_role(rds_like):
    _run(rds_like)
    rds_like.psql("DROP DATABASE IF EXISTS other_app", dbname="postgres")
    script = _script()
    with _as_master(rds_like) as conn:
        outcome = script.bootstrap(conn, "other_app", "nextcloud", APP_PASSWORD)
    assert outcome.endswith("database other_app created to it")
    assert rds_like.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'other_app'",
                         dbname="postgres").strip() == "nextcloud"


def test_a_role_widened_beyond_what_the_master_can_undo_is_refused(rds_like):
    _run(rds_like)
    rds_like.psql("ALTER ROLE nextcloud REPLICATION", dbname="postgres")
    try:
        with pytest.raises(RuntimeError, match="has REPLICATION"):
            _run(rds_like)
    finally:
        rds_like.psql("ALTER ROLE nextcloud NOREPLICATION", dbname="postgres")


def test_the_password_never_reaches_the_server_only_its_scram_verifier(rds_like):
    # With every statement logged (as on an error, or with log_statement on RDS, whose log CloudWatch may export),
    # the log holds the verifier the role now has, and never the password; the password still logs in (over
    # scram-sha-256: the throwaway server's host rule, like RDS's).
    rds_like.psql("ALTER SYSTEM SET log_statement = 'all'", dbname="postgres")
    rds_like.psql("SELECT pg_reload_conf()", dbname="postgres")
    try:
        start = rds_like.logfile.stat().st_size
        _run(rds_like)
        rds_like.psql("ALTER ROLE nextcloud CREATEDB", dbname="postgres")
        _run(rds_like)  # the repair path's ALTER ROLE too
        with rds_like.logfile.open(encoding="utf-8", errors="replace") as fh:
            fh.seek(start)
            logged = fh.read()
    finally:
        rds_like.psql("ALTER SYSTEM RESET log_statement", dbname="postgres")
        rds_like.psql("SELECT pg_reload_conf()", dbname="postgres")
    assert APP_PASSWORD not in logged
    stored = rds_like.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'nextcloud'", dbname="postgres").strip()
    assert stored.startswith("SCRAM-SHA-256$4096:") and f"PASSWORD '{stored}'" in logged
    assert logged.count("PASSWORD 'SCRAM-SHA-256$4096:") == 2
    with psycopg.connect(host=rds_like.host, port=rds_like.port, dbname="nextcloud", user="nextcloud",
                         password=APP_PASSWORD) as app:
        assert app.execute("SELECT current_user").fetchone() == ("nextcloud",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host=rds_like.host, port=rds_like.port, dbname="nextcloud", user="nextcloud",
                        password=APP_PASSWORD + "x").close()


def test_the_verifier_is_the_one_libpq_computes_for_the_same_salt(rds_like):
    # libpq's PQencryptPasswordConn (what psql's \password sends) is the reference: same salt and iterations, same
    # keys. Each verifier has a fresh salt.
    script = _script()
    for password in (APP_PASSWORD, "p", "with spaces & 'quotes' \\ and $ signs", "x" * 200):
        with _as_master(rds_like) as conn:
            reference = conn.pgconn.encrypt_password(password.encode(), b"nextcloud", b"scram-sha-256").decode()
        iterations, rest = reference.removeprefix("SCRAM-SHA-256$").split(":", 1)
        salt = base64.b64decode(rest.split("$", 1)[0])
        assert script.scram_sha256_verifier(password, salt=salt, iterations=int(iterations)) == reference, password
    assert script.scram_sha256_verifier(APP_PASSWORD) != script.scram_sha256_verifier(APP_PASSWORD)


# Named ids: a random value in a test id differs between pytest-xdist's workers, which then refuse to run at all.
@pytest.mark.parametrize("password", ["", "pässword-" + secrets.token_hex(4)], ids=["empty", "not-ascii"])
def test_a_password_postgresql_would_prepare_differently_is_refused_without_its_value(rds_like, password):
    script = _script()
    with _as_master(rds_like) as conn, pytest.raises(script.PasswordRefused, match="non-empty ASCII") as refused:
        script.bootstrap(conn, "nextcloud", "nextcloud", password)
    assert password not in str(refused.value) or not password
    assert rds_like.psql("SELECT count(*) FROM pg_roles WHERE rolname = 'nextcloud'", dbname="postgres").strip() == "0"
