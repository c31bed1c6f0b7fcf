"""GET /readyz and /livez against a real PostgreSQL and Redis, served by `php -S` from the image's own PHP files
(the router stands in for the Apache Aliases): readiness answers 503 + a precise reason for each way a node can be
unfit for traffic, 200 only when installed, not in maintenance, no upgrade pending, DB and Redis reachable;
liveness never depends on the shared services. Details go only to local callers.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import redis
from conftest import CLUSTER_LIB, DB_PASSWORD, IDENTITY, REDIS_PASSWORD, free_port

from infra.localtwin.services import ThrowawayRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def ready_node(make_node):
    """An installed cluster and one node that joined it, serving /readyz over HTTP."""
    installer = make_node("installer")
    rc, out = installer.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="0")  # arranging only
    assert rc == 0, out
    node = make_node("web")
    node.start_container()
    wait_for(node, 200)
    return node


def wait_for(node, status: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        got, body = node.readyz_http()
        if got == status or time.monotonic() > deadline:
            assert got == status, (body, node.last_log.read_text())
            return body
        time.sleep(0.2)


def test_ready_when_installed_and_everything_reachable(ready_node):
    status, body = ready_node.readyz_http()
    assert status == 200
    assert body == {"ready": True, "code": "ready", "reason": "", "version": "34.0.3.1", "versionstring": "34.0.3"}


def test_not_installed(make_node):
    node = make_node("web")
    node.start_container()  # empty DB, this node may not install
    body = wait_for(node, 503)
    deadline = time.monotonic() + 20
    while body["code"] != "not_installed" and time.monotonic() < deadline:
        time.sleep(0.2)
        _, body = node.readyz_http()
    assert body["ready"] is False and body["code"] == "not_installed"
    assert body["reason"].startswith("not installed: the database is empty")


def _maintenance_on(node, pg, redis):
    # What an operator's drop-in would do; Nextcloud merges config/*.config.php the same way.
    (node.webroot / "config" / "zz-maintenance.config.php").write_text("<?php\n$CONFIG = ['maintenance' => true];\n")


def _maintenance_off(node, pg, redis):
    (node.webroot / "config" / "zz-maintenance.config.php").unlink()


def _newer_code(node, pg, redis):
    node.set_code_version((34, 0, 4, 1))


def _same_code(node, pg, redis):
    node.set_code_version((34, 0, 3, 1))


def _marker_away(node, pg, redis):
    (node.webroot / "data" / ".ncdata").rename(node.webroot / "data" / ".ncdata.away")


def _marker_back(node, pg, redis):
    (node.webroot / "data" / ".ncdata.away").rename(node.webroot / "data" / ".ncdata")


# (name, break, expected code, words the reason must contain, repair)
CASES = [
    ("data directory marker missing", _marker_away, "datadir_invalid",
     ["has no .ncdata", "Your data directory is invalid"], _marker_back),
    ("maintenance", _maintenance_on, "maintenance", ["maintenance mode is on"], _maintenance_off),
    ("upgrade pending", _newer_code, "upgrade_pending",
     ["upgrade pending", "34.0.4.1", "newer than installed 34.0.3.1"], _same_code),
    ("db down", lambda n, pg, r: pg.stop(), "db_unreachable", ["database unreachable"], lambda n, pg, r: pg.start()),
    ("redis down", lambda n, pg, r: r.stop(), "redis_unreachable", ["redis unreachable"],
     lambda n, pg, r: r.start()),
]


@pytest.mark.parametrize(("name", "breaker", "code", "words", "repair"), CASES, ids=[c[0] for c in CASES])
def test_not_ready_reason_then_ready_again(ready_node, services, name, breaker, code, words, repair):
    pg, redis = services
    breaker(ready_node, pg, redis)
    started = time.monotonic()
    status, body = ready_node.readyz_http()
    assert time.monotonic() - started < 5, "readiness must answer quickly even when a dependency is down"
    assert status == 503 and body["ready"] is False and body["code"] == code, body
    for w in words:
        assert w in body["reason"], body
    repair(ready_node, pg, redis)
    wait_for(ready_node, 200)


def test_missing_variable_is_named(make_node):
    node = make_node("web")
    node.secret_env.pop("NEXTCLOUD_DB_PASSWORD")
    node.start_container()
    body = wait_for(node, 503)
    assert body["code"] == "config_error"
    assert "NEXTCLOUD_DB_PASSWORD is not set" in body["reason"]
    # The init stopped on the same error and says so too (its state, its log).
    state = node.wait_state("config_error")
    assert state["phase"] == "failed" and "NEXTCLOUD_DB_PASSWORD is not set" in state["reason"]
    assert "NEXTCLOUD_DB_PASSWORD is not set" in node.last_log.read_text()


def test_a_stop_signal_to_the_whole_group_ends_the_container_at_once(make_node):
    """SIGTERM to every process of the container at once (as `end_group` sends it): the web server dies while the
    entrypoint's trap runs, and the entrypoint must still exit then, not spin until SIGKILL. A race: several tries."""
    import os
    import signal

    for attempt in range(6):
        node = make_node(f"stop{attempt}")
        node.secret_env.pop("NEXTCLOUD_DB_PASSWORD")  # the init ends at once; the web server keeps serving
        entrypoint = node.start_container()
        node.wait_state("config_error")
        os.killpg(entrypoint.pid, signal.SIGTERM)
        try:
            entrypoint.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"try {attempt + 1}: the entrypoint was still running 5 s after SIGTERM "
                        f"({node.last_log.read_text()[-400:]})")


def test_wrong_redis_password_is_not_ready(ready_node):
    result = ready_node.readyz_cli(NEXTCLOUD_REDIS_PASSWORD="wrong-password")
    assert result["code"] == "redis_unreachable"
    assert "wrong-password" not in result["reason"]


@pytest.fixture(scope="module")
def redis_tls():
    """Redis that speaks TLS only (ElastiCache in-transit encryption), with a throwaway CA."""
    with ThrowawayRedis(free_port(), REDIS_PASSWORD, tls=True) as server:
        yield server


def test_redis_tls_readiness_and_sessions(make_node, redis_tls):
    installer = make_node("installer")
    rc, out = installer.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="0")  # arranging only
    assert rc == 0, out
    node = make_node("tls")
    # "localhost": the name in the server certificate; verification stays on (trusting the test CA).
    node.public_env.update(NEXTCLOUD_REDIS_HOST="localhost", NEXTCLOUD_REDIS_PORT=str(redis_tls.port),
                           NEXTCLOUD_REDIS_TLS="1")
    trust = {"SSL_CERT_FILE": str(redis_tls.ca_file)}
    node.start_container(**trust)
    wait_for(node, 200)

    # PHP sessions go to Redis over tls:// with the password from the runtime env file.
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/session", timeout=10) as r:
        session = json.loads(r.read())
    assert session["handler"] == "redis"
    client = redis.Redis(host="localhost", port=redis_tls.port, password=REDIS_PASSWORD, ssl=True,
                         ssl_ca_certs=str(redis_tls.ca_file))
    assert client.exists(f"PHPREDIS_SESSION:{session['id']}") == 1

    # Without the CA the certificate is rejected: verification is really on. Plaintext to a TLS port fails too.
    untrusted = node.readyz_cli(SSL_CERT_FILE="/dev/null")
    assert untrusted["code"] == "redis_unreachable"
    plain = node.readyz_cli(NEXTCLOUD_REDIS_TLS="0", **trust)
    assert plain["code"] == "redis_unreachable"
    assert node.readyz_cli(**trust)["ready"] is True


def test_shared_service_outage_leaves_liveness_up_and_readiness_down(ready_node, services):
    """A PostgreSQL failover or a Redis blip takes the node out of the load balancer (readiness) but must never
    fail the check the Auto Scaling group follows (liveness): otherwise the whole fleet would be replaced."""
    pg, redis_server = services
    for stop, start, code in ((pg.stop, pg.start, "db_unreachable"), (redis_server.stop, redis_server.start,
                                                                      "redis_unreachable")):
        stop()
        status, body = ready_node.readyz_http()
        assert (status, body["code"]) == (503, code), body
        assert ready_node.livez_http() == (200, {"live": True, "code": "live", "reason": ""})
        start()
        wait_for(ready_node, 200)
        assert ready_node.livez_http()[0] == 200


def test_liveness_fails_without_the_runtime_secrets(make_node):
    node = make_node("nosecrets")
    node.secret_env.pop("NEXTCLOUD_DB_PASSWORD")
    node.start_container()
    status, body = node.livez_http()
    assert status == 503 and body["code"] == "secrets_missing" and "NEXTCLOUD_DB_PASSWORD" in body["reason"], body


PROXIED = [{"X-Forwarded-For": "203.0.113.7"}, {"X-Real-IP": "127.0.0.1"}, {"Forwarded": "for=203.0.113.7"}]


@pytest.mark.parametrize("headers", PROXIED, ids=["x-forwarded-for", "x-real-ip", "forwarded"])
def test_a_request_through_a_proxy_gets_only_the_status_and_a_code_word(ready_node, services, headers):
    pg, _ = services
    status, body = ready_node.readyz_http(headers=headers)
    assert (status, body) == (200, {"ready": True})  # not even the version
    pg.stop()
    status, body = ready_node.readyz_http(headers=headers)
    assert (status, body) == (503, {"ready": False, "code": "db_unreachable"})
    status, body = ready_node.livez_http(headers=headers)
    assert (status, body) == (200, {"live": True})
    # The same request from this machine, without a proxy header, gets the details (for the operator).
    status, local = ready_node.readyz_http()
    assert status == 503 and f"{pg.host}:{pg.port}" in local["reason"], local
    # And the journal (the web server's error log: the container's output) has them too, once per change.
    log = ready_node.last_log.read_text()
    assert "nextcloud-health: ready: db_unreachable: database unreachable" in log
    assert DB_PASSWORD not in log


@pytest.mark.parametrize(("sapi", "server", "expected"), [
    ("apache2handler", {"REMOTE_ADDR": "127.0.0.1"}, False),  # REMOTE_ADDR may come from mod_remoteip: ignored
    ("apache2handler", {"NEXTCLOUD_HEALTH_PEER_LOOPBACK": "1"}, True),
    ("apache2handler", {"NEXTCLOUD_HEALTH_PEER_LOOPBACK": "1", "HTTP_X_REAL_IP": "127.0.0.1"}, False),
    ("apache2handler", {"NEXTCLOUD_HEALTH_PEER_LOOPBACK": "1", "HTTP_X_FORWARDED_FOR": "10.0.0.1"}, False),
    ("cli-server", {"REMOTE_ADDR": "10.0.2.2"}, False),
    ("cli-server", {"REMOTE_ADDR": "::1"}, True),
    ("cli-server", {"REMOTE_ADDR": "::ffff:127.0.0.1"}, True),
    ("cli-server", {"REMOTE_ADDR": "127.0.0.1", "HTTP_FORWARDED": "for=1.2.3.4"}, False),
    ("cli", {}, True),
], ids=["apache-remote-addr-only", "apache-peer-loopback", "apache-x-real-ip", "apache-xff", "remote", "ipv6-lo",
        "v4-mapped-lo", "forwarded", "cli"])
def test_who_may_see_details(sapi, server, expected):
    code = (f"require '{CLUSTER_LIB}/lib.php'; $s = json_decode($argv[1], true);"
            " echo json_encode(\\NextcloudCluster\\callerMaySeeDetails($s, $argv[2]));")
    out = subprocess.run(["php", "-r", code, json.dumps(server), sapi], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) is expected


def test_instance_id_never_reaches_a_proxied_caller(make_node):
    installer = make_node("installer")
    rc, out = installer.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="0")  # arranging only
    assert rc == 0, out
    stranger = make_node("stranger")
    stranger.secret_env["NEXTCLOUD_INSTANCEID"] = "ocother12345"
    stranger.start_container()
    deadline = time.monotonic() + 20
    while stranger.readyz_http()[1].get("code") != "identity_mismatch" and time.monotonic() < deadline:
        time.sleep(0.2)
    status, local = stranger.readyz_http()
    assert status == 503 and IDENTITY["NEXTCLOUD_INSTANCEID"] in local["reason"], local  # the operator sees it
    status, body = stranger.readyz_http(headers={"X-Forwarded-For": "203.0.113.7"})
    assert (status, body) == (503, {"ready": False, "code": "identity_mismatch"})


def test_not_ready_when_nextcloud_itself_does_not_answer(ready_node):
    result = ready_node.readyz_cli(NEXTCLOUD_STATUS_URL=f"http://127.0.0.1:{free_port()}/status.php")
    assert result["code"] == "nextcloud_unavailable" and "did not answer" in result["reason"], result


def test_not_ready_when_nextcloud_refuses_to_serve(ready_node):
    # Nextcloud's own verdict beats ours: the stand-in's status.php answers 503 as the real one does on a broken
    # data directory; readiness reports Nextcloud's words whatever else it checked.
    (ready_node.webroot / "data" / ".ncdata").unlink()
    status, _, body = _get(ready_node, "/status.php")
    assert status == 503 and "Your data directory is invalid" in body
    assert ready_node.readyz_http()[1]["code"] == "datadir_invalid"


def _get(node, path: str) -> tuple[int, dict, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}{path}", timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_joining_nodes_get_distinct_serverids_and_free_them_when_they_stop(ready_node, make_node, services):
    pg, _ = services
    second = make_node("web2")
    second.start_container()
    wait_for(second, 200)
    ids = [ready_node.state()["serverid"], second.state()["serverid"]]
    assert len(set(ids)) == 2 and all(1 <= i <= 511 for i in ids), ids
    held = set(map(int, pg.psql("SELECT serverid FROM nextcloud_cluster_nodes").split()))
    assert set(ids) <= held  # (the fixture's installer, a bare init run, holds one too)
    second.stop()  # SIGTERM to the entrypoint: the node drains and releases its serverid
    held = set(map(int, pg.psql("SELECT serverid FROM nextcloud_cluster_nodes").split()))
    assert ids[0] in held and ids[1] not in held, (ids, held)


def test_a_node_whose_serverid_lease_was_taken_is_not_ready(ready_node, services):
    pg, _ = services
    pg.psql("DELETE FROM nextcloud_cluster_nodes")
    body = ready_node.readyz_http()[1]
    assert body["code"] == "serverid_lost", body
