"""The real-Nextcloud test lane (infra/lane): the derived image built on a base, two nodes of it against a real
PostgreSQL, Redis with TLS (a throwaway CA) and an S3 endpoint (moto's server), all on loopback.

The base: ``LANE_BASE`` (``inv lane --base IMAGE`` or ``--env E`` sets it: the digest-pinned official image, which
GitHub CI runs), else the stand-in (a test fixture without Nextcloud code). On the stand-in, what needs
Nextcloud's own code (WebDAV, S3 primary storage, background jobs, the upgrade) is skipped with that reason; what
the project's own code does (one install under a race, one identity, the rendered config, the health endpoints)
is asserted on either base. The engine: Docker at DOCKER_HOST, else a private Podman API service.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time

import pytest

from infra.lane.lane import CONTEXT, docker_engine_available, open_lane

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

NODE_TIMEOUT_S = float(os.environ.get("LANE_NODE_TIMEOUT", "600"))
NEEDS_NEXTCLOUD = "needs Nextcloud's own code ({what}): the base is the stand-in, a test fixture without it"
INSTALLED = re.compile(r"nextcloud-cluster-init\[\d+\]: installed Nextcloud \S+ as cluster ")
UPGRADED = re.compile(r"nextcloud-cluster-init\[\d+\]: upgraded the cluster to ")


def _engine_missing() -> str | None:
    if docker_engine_available():
        return None
    missing = [t for t in ("podman", "runc") if shutil.which(t) is None]
    if not os.environ.get("LANE_BASE"):
        missing += [t for t in ("skopeo", "docker-registry", "mmdebstrap") if shutil.which(t) is None]
    return f"no Docker engine and {', '.join(missing)} missing (bash .ci/setup)" if missing else None


@pytest.fixture(scope="module")
def lane(tmp_path_factory):
    if reason := _engine_missing():
        pytest.skip(reason)
    with open_lane(os.environ.get("LANE_BASE") or None, tmp_path_factory.mktemp("lane"),
                   log=lambda m: print(f"lane: {m}", flush=True)) as opened:
        yield opened


@pytest.fixture(scope="module")
def nodes(lane):
    """Two nodes started at the same moment, both allowed to install: a race for the one install."""
    ports = [_free_port(), _free_port()]
    started = time.monotonic()
    a = lane.cluster.start_node("a", lane.image, ports[0], allow_install=True)
    b = lane.cluster.start_node("b", lane.image, ports[1], allow_install=True)
    a.wait_ready(NODE_TIMEOUT_S)
    b.wait_ready(NODE_TIMEOUT_S)
    print(f"lane: both nodes ready {time.monotonic() - started:.0f}s after start", flush=True)
    return a, b


def _free_port() -> int:
    from infra.localtwin.instance import free_port

    return free_port()


def _code_version(lane) -> str:
    """NEXTCLOUD_VERSION from the base image's own configuration (the official image and the stand-in set it)."""
    env = dict(e.split("=", 1) for e in lane.client.images.get(lane.base).attrs["Config"]["Env"])
    return env["NEXTCLOUD_VERSION"]


def _row(lane) -> dict[str, str]:
    out = lane.services.pg.psql("SELECT row_to_json(s) FROM nextcloud_cluster_state s")
    import json

    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 1, rows
    return rows[0]


def test_two_racing_nodes_install_exactly_once(lane, nodes):
    logs = [n.logs() for n in nodes]
    installs = [len(INSTALLED.findall(log)) for log in logs]
    assert sorted(installs) == [0, 1], f"install lines per node: {installs}"
    assert _row(lane)["state"] == "installed"
    # Only the installing node asked the host's socket for the admin password (no runtime.env carries it).
    assert lane.cluster.admin_socket.fetches == 1
    if lane.standin:
        # The stand-in's occ double records every call in the database: one maintenance:install across the cluster.
        calls = lane.services.pg.psql("SELECT count(*) FROM occ_double_calls WHERE verb = 'maintenance:install'")
        assert calls.strip() == "1"
    else:
        users = lane.services.pg.psql("SELECT uid FROM oc_users").split()
        assert users == [lane.cluster.admin_user]


def test_the_second_node_joins_with_the_same_identity(lane, nodes):
    identity = lane.cluster.identity
    row = _row(lane)
    assert (row["instanceid"], row["identity_digest"]) == (identity.instanceid, identity.digest)
    for node in nodes:
        config = node.effective_config()
        assert (config["instanceid"], config["passwordsalt"], config["secret"]) == (
            identity.instanceid, identity.passwordsalt, identity.secret), node.name


def test_every_node_renders_its_config_from_the_environment(lane, nodes):
    pg, redis, s3 = lane.services.pg, lane.services.redis, lane.services.s3
    for node in nodes:
        c = node.effective_config()
        # The port rides in dbhost: the only place Nextcloud reads it from at run time (ConnectionFactory).
        assert (c["dbtype"], c["dbhost"], c["dbname"], c["dbuser"], c["dbpassword"]) == (
            "pgsql", f"127.0.0.1:{pg.port}", pg.dbname, pg.user, pg.password)
        assert "dbport" not in c
        assert c["redis"]["host"] == "tls://localhost" and int(c["redis"]["port"]) == redis.port
        assert c["redis"]["password"] == redis.password
        assert c["redis"]["ssl_context"] == {"verify_peer": True, "verify_peer_name": True}
        args = c["objectstore"]["arguments"]
        assert c["objectstore"]["class"].endswith("ObjectStore\\S3")
        assert (args["bucket"], args["hostname"], int(args["port"]), args["use_ssl"], args["use_path_style"]) == (
            lane.cluster.bucket, "127.0.0.1", s3.port, False, True)
        assert c["trusted_domains"] == ["localhost", "127.0.0.1"]
        assert c["installed"] is True and c["config_is_read_only"] is True
        assert str(c["version"]).startswith(_code_version(lane) + ".")


def test_both_nodes_are_ready_with_the_code_version(lane, nodes):
    version = _code_version(lane)
    for node in nodes:
        status, body = node.readyz()
        assert status == 200 and body["ready"] is True, (node.name, status, body)
        assert str(body["version"]).startswith(version + "."), body
        assert node.state()["phase"] == "ready"


def test_liveness_endpoint(lane, nodes):
    if not (CONTEXT / "cluster" / "livez").is_dir():
        pytest.skip("this tree's image has no /livez yet (image/nextcloud/cluster/livez/)")
    for node in nodes:
        status, _, body = node.http("/livez", timeout=5)
        assert status == 200, (node.name, status, body[:300])


def test_a_file_uploaded_through_a_downloads_intact_through_b_and_lies_in_the_bucket(lane, nodes):
    a, b = nodes
    payload = secrets.token_bytes(1 << 20)
    path = f"/remote.php/dav/files/{lane.cluster.admin_user}/lane-{secrets.token_hex(4)}.bin"
    auth = (lane.cluster.admin_user, lane.cluster.admin_password)
    status, _, body = a.http(path, method="PUT", data=payload, auth=auth, timeout=120)
    assert status in (201, 204), (status, body[:500])
    status, _, body = b.http(path, auth=auth, timeout=120)
    assert status == 200 and body == payload, (status, len(body))
    stored = lane.services.s3.objects(lane.cluster.bucket)
    keys = [key for key, content in stored.items() if content == payload]
    assert keys, f"no object of {lane.cluster.bucket} holds the file ({len(stored)} objects)"
    # Nextcloud's object store names an object by its file id (ObjectStoreStorage: urn:oid:<fileid>).
    assert all(re.fullmatch(r"urn:oid:\d+", key) for key in keys), keys


def test_background_jobs_run_on_both_nodes(lane, nodes):
    for node in nodes:
        started = int(time.time())
        rc, out = node.exec("nextcloud-cron")
        assert rc == 0, (node.name, out[-2000:])
        lastcron = lane.services.pg.psql(
            "SELECT configvalue FROM oc_appconfig WHERE appid = 'core' AND configkey = 'lastcron'")
        assert int(lastcron.strip() or 0) >= started, node.name
    if not lane.standin:
        ran = lane.services.pg.psql(f"SELECT count(*) FROM oc_jobs WHERE last_run >= {started}")
        assert int(ran) > 0


# ---- conformance: the same assertions hold on the stand-in and on a real release (nextcloud.release) ----------
def _status(node) -> tuple[int, dict]:
    status, _, body = node.http("/status.php", timeout=60)
    try:
        return status, json.loads(body)
    except ValueError:  # an error page: its text, without the markup
        text = re.sub(r"<(script|style|head)\b.*?</\1>|<[^>]+>", " ", body.decode(errors="replace"), flags=re.S)
        return status, {"raw": " ".join(text.split())}


def test_both_nodes_serve_status_and_run_occ_on_a_non_default_database_port(lane, nodes):
    assert lane.services.pg.port != 5432, "the lane's PostgreSQL must listen on a port other than the default"
    for node in nodes:
        status, body = _status(node)
        assert status == 200 and body.get("installed") is True and body.get("maintenance") is False, (node.name, body)
        assert body.get("needsDbUpgrade") is False, (node.name, body)
        rc, out = node.exec("nextcloud-occ", "status", "--output=json")
        assert rc == 0 and json.loads(out[out.index("{"):])["installed"] is True, (node.name, out[-1500:])


def test_the_data_directory_is_denied_on_both_nodes(lane, nodes):
    for node in nodes:
        assert node.has_file("/usr/src/nextcloud/data/.ncdata"), node.name
        for path in ("/data/.ncdata", "/data/", "/data/.ocdata"):
            status, _, body = node.http(path, timeout=30)
            assert status in (403, 404), (node.name, path, status, body[:200])


def test_each_node_holds_its_own_serverid(lane, nodes):
    ids = [node.effective_config().get("serverid") for node in nodes]
    assert all(isinstance(i, int) and 1 <= i <= 511 for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    rows = lane.services.pg.psql("SELECT serverid FROM nextcloud_cluster_nodes ORDER BY serverid").split()
    assert sorted(map(int, rows)) == sorted(ids)


def test_readiness_agrees_with_status_php_on_a_broken_node(lane, nodes):
    node = nodes[1]
    assert node.readyz()[0] == 200 and _status(node)[0] == 200
    rc, out = node.exec("mv", "/usr/src/nextcloud/data/.ncdata", "/usr/src/nextcloud/data/.ncdata.away")
    assert rc == 0, out
    try:
        status, body = _status(node)
        assert status == 503 and "data directory is invalid" in body.get("raw", ""), (status, body)
        rc, out = node.exec("nextcloud-occ", "status")
        assert rc != 0 and "Environment not properly prepared" in out, out[-1500:]
        deadline = time.monotonic() + 15  # the verdict is cached for up to 5 s
        answer = node.readyz()
        while answer[0] == 200 and time.monotonic() < deadline:
            time.sleep(1)
            answer = node.readyz()
        assert answer[0] == 503 and answer[1].get("code") == "datadir_invalid", answer
        rc, out = node.exec("nextcloud-cron")
        assert "skipped: this node is not ready (datadir_invalid" in out, (rc, out[-1500:])
    finally:
        node.exec("mv", "/usr/src/nextcloud/data/.ncdata.away", "/usr/src/nextcloud/data/.ncdata")
    node.wait_ready(30)
    assert _status(node)[0] == 200


def _previous_release(reference: str) -> str | None:
    """``repo:34.0.3-apache@sha256:…`` → ``repo:34.0.2-apache`` (the previous release of the same major.minor)."""
    repo_tag = reference.split("@", 1)[0]
    repo, _, tag = repo_tag.rpartition(":")
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(-.+)?", tag)
    if not m or int(m.group(3)) == 0:
        return None
    return f"{repo}:{m.group(1)}.{m.group(2)}.{int(m.group(3)) - 1}{m.group(4) or ''}"


def test_readiness_probes_cost_one_check_per_node_every_few_seconds(lane, nodes):
    node = nodes[0]
    node.wait_ready(60)
    before = node.logs().count("nextcloud-cluster-readiness")
    started = time.monotonic()
    answers = [node.readyz()[0] for _ in range(30)]
    elapsed = time.monotonic() - started
    after = node.logs().count("nextcloud-cluster-readiness")
    assert answers == [200] * 30, answers
    # One verdict per 5 s for all of Apache's workers: at most one status.php run (and one database and Redis
    # check) per started 5 s, however many probes arrive.
    assert after - before <= int(elapsed // 5) + 1, (after - before, f"{elapsed:.1f}s")



def _address_apache_logged(node, path: str) -> str:
    """The client address in the access-log line of ``path`` (%h: what mod_remoteip made REMOTE_ADDR, for PHP too)."""
    lines = [line for line in node.logs().splitlines() if f"GET {path} " in line]
    assert lines, f"no access-log line for {path}"
    return lines[-1].split(" ", 1)[0]


def _forge(node, path: str) -> None:
    import urllib.request

    req = urllib.request.Request(node.url + path, headers={
        "X-Real-IP": "203.0.113.66", "X-Forwarded-For": "203.0.113.77, 198.51.100.9"})
    with contextlib.suppress(OSError):  # any answer will do: the access log records the address
        urllib.request.urlopen(req, timeout=30).close()  # noqa: S310 - loopback only


def test_a_client_cannot_choose_its_address(lane, nodes):
    # From a peer that is not a listed proxy, neither header is believed: Apache and PHP see the TCP peer.
    node = nodes[0]
    path = f"/robots.txt?untrusted-{secrets.token_hex(3)}"
    _forge(node, path)
    assert _address_apache_logged(node, path) == "127.0.0.1"
    # From a listed proxy (the load balancer's subnet), only the address it appended to X-Forwarded-For counts;
    # X-Real-IP, which a client can pass through the load balancer, never does.
    proxied = lane.cluster.start_node("proxied", lane.image, _free_port(), allow_install=False,
                                      extra_env={"NEXTCLOUD_TRUSTED_PROXIES": "127.0.0.1/32"})
    try:
        proxied.wait_ready(NODE_TIMEOUT_S)
        path = f"/robots.txt?proxied-{secrets.token_hex(3)}"
        _forge(proxied, path)
        assert _address_apache_logged(proxied, path) == "198.51.100.9"
    finally:
        proxied.remove()


# It replaces one of the two nodes the tests above share.
def test_the_installing_node_serves_again_after_its_container_is_replaced(lane, nodes):
    installer = next(n for n in nodes if INSTALLED.search(n.logs()))
    old_id = installer.effective_config()["serverid"]
    installer.remove()
    again = lane.cluster.start_node(installer.name, lane.image, installer.port, allow_install=True)
    again.wait_ready(NODE_TIMEOUT_S)
    status, body = _status(again)
    assert status == 200 and body.get("installed") is True, body
    assert not INSTALLED.search(again.logs()), "a restarted node must join, not install again"
    ids = lane.services.pg.psql("SELECT serverid FROM nextcloud_cluster_nodes").split()
    assert len(ids) == len(set(ids)) and str(again.effective_config()["serverid"]) in ids, (old_id, ids)


# Last: the upgrade tests start clusters of their own (the shared nodes above are gone after them).
def test_an_upgrade_runs_exactly_once_when_the_code_is_newer_than_the_cluster(lane, nodes):
    # On either base, with one release at hand: the cluster is installed, then its recorded version is set back
    # (what a cluster installed by the previous patch release records), and two nodes that may upgrade start at
    # once. Exactly one runs occ upgrade (real Nextcloud's Updater, or the stand-in's double), the other joins.
    cluster = lane.new_cluster()
    first = cluster.start_node("installer", lane.image, _free_port(), allow_install=True)
    first.wait_ready(NODE_TIMEOUT_S)
    code = _row(lane)["version"]
    major, minor = code.split(".")[:2]
    older = f"{major}.{minor}.0.0"
    first.remove()
    lane.services.pg.psql(
        f"UPDATE nextcloud_cluster_state SET version = '{older}', versionstring = '{major}.{minor}.0'")
    a = cluster.start_node("up-a", lane.image, _free_port(), allow_install=False, allow_upgrade=True)
    b = cluster.start_node("up-b", lane.image, _free_port(), allow_install=False, allow_upgrade=True)
    a.wait_ready(NODE_TIMEOUT_S)
    b.wait_ready(NODE_TIMEOUT_S)
    upgrades = [len(UPGRADED.findall(n.logs())) for n in (a, b)]
    assert sorted(upgrades) == [0, 1], f"upgrade lines per node: {upgrades}"
    row = _row(lane)
    assert row["state"] == "installed" and row["version"] == code, row
    for node in (a, b):
        status, body = _status(node)
        assert status == 200 and body.get("needsDbUpgrade") is False, (node.name, body)


def test_an_upgrade_from_the_previous_release_runs_exactly_once(lane, nodes):
    if lane.standin:
        pytest.skip(NEEDS_NEXTCLOUD.format(what="occ upgrade"))
    previous = os.environ.get("LANE_UPGRADE_FROM") or (
        None if "/nextcloud-release:" in lane.base else _previous_release(lane.base))
    if previous is None and "/nextcloud-release:" in lane.base:
        pytest.skip("the base is one release (nextcloud.release): set LANE_UPGRADE_FROM to an image of an older one")
    if previous is None:
        pytest.skip(f"{lane.base} has no previous release of its major.minor (set LANE_UPGRADE_FROM)")
    old = lane.build(previous, f"nextcloud-lane-previous:{secrets.token_hex(4)}", log=print)
    cluster = lane.new_cluster()
    first = cluster.start_node("old", old, _free_port(), allow_install=True)
    first.wait_ready(NODE_TIMEOUT_S)
    old_version = _row(lane)["version"]
    first.remove()
    a = cluster.start_node("new-a", lane.image, _free_port(), allow_install=False, allow_upgrade=True)
    b = cluster.start_node("new-b", lane.image, _free_port(), allow_install=False, allow_upgrade=True)
    a.wait_ready(NODE_TIMEOUT_S)
    b.wait_ready(NODE_TIMEOUT_S)
    upgrades = [len(UPGRADED.findall(n.logs())) for n in (a, b)]
    assert sorted(upgrades) == [0, 1], f"upgrade lines per node: {upgrades}"
    row = _row(lane)
    assert row["state"] == "installed" and row["version"] != old_version
    assert row["version"].startswith(_code_version(lane) + ".")
