"""The cluster init against a real PostgreSQL and Redis: install and upgrade happen exactly once per cluster,
however many nodes start at the same time; nodes that may not act wait and write nothing.

Nextcloud itself is the stand-in's occ test double (infra/localtwin/standin/nextcloud/occ), which records every call in
the database; everything else (cluster-init.php, lib.php, cluster.config.php, the entrypoint) is the image's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import (
    ADMIN_PASSWORD,
    CLUSTER_LIB,
    DB_PASSWORD,
    ENTRYPOINT,
    IDENTITY,
    REDIS_PASSWORD,
    db_snapshot,
    occ_calls,
    query,
)

pytestmark = pytest.mark.integration

NODES = 8
NEWER = (34, 0, 4, 1)


def effective_identity(node) -> dict[str, str]:
    """What Nextcloud on this node would use: the merged config, loaded the way Nextcloud loads it."""
    code = (f"require '{CLUSTER_LIB}/lib.php'; $c = \\NextcloudCluster\\loadConfig();"
            " echo json_encode([$c['instanceid'], $c['passwordsalt'], $c['secret'], $c['installed'], $c['version']]);")
    out = subprocess.run(["php", "-r", code], env=node.env(), capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def install_cluster(make_node) -> None:
    installer = make_node("installer")
    # Arranging, not racing: no stand-in install time (the tests that race installers keep the default).
    rc, out = installer.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="0")
    assert rc == 0, out


def test_concurrent_starters_on_empty_db_install_exactly_once(make_node, pg):
    nodes = [make_node(f"n{i}") for i in range(NODES)]
    with ThreadPoolExecutor(NODES) as pool:
        results = list(pool.map(lambda n: n.run_init(timeout=90, NEXTCLOUD_ALLOW_INSTALL="1"), nodes))

    for node, (rc, out) in zip(nodes, results, strict=True):
        assert rc == 0, f"{node.name}: {out}"
    installs = occ_calls(pg, "maintenance:install")
    assert len(installs) == 1 and installs[0][2] == 0, installs
    rows = query(pg, "SELECT state, instanceid, version, installed_at = updated_at, identity_digest "
                     "FROM nextcloud_cluster_state")
    # installed_at = updated_at: the joiners wrote nothing.
    assert [r[:4] for r in rows] == [("installed", IDENTITY["NEXTCLOUD_INSTANCEID"], "34.0.3.1", True)]
    # The install itself ran with the cluster identity, not the installer's fresh random salt/secret.
    assert installs[0][3] == f"installed 34.0.3.1 identity={rows[0][4]}"
    assert query(pg, "SELECT uid FROM oc_users") == [("admin",)]
    # Only the node that installed asked the host for the admin password; no other fetched or holds it.
    assert sorted(n.admin_socket.fetches for n in nodes) == [0] * (NODES - 1) + [1]
    # Once installed, every node that may install asks the host to seal it (idempotent: whichever comes first removes
    # the install tag; a node that died between install and seal is made good by the next). Literals, as on the local
    # twin: the host says there is nothing to seal, and the init logs that line.
    assert [n.admin_socket.seals for n in nodes] == [1] * NODES
    (installer,) = [n for n in nodes if n.admin_socket.fetches]
    assert "resolve-secrets: nothing to seal: the admin password comes from literal" in installer.last_log.read_text()
    # The background-jobs mode the admin manual recommends, set at install (cluster-wide, in the database).
    mode = "SELECT configvalue FROM oc_appconfig WHERE appid = 'core' AND configkey = 'backgroundjobs_mode'"
    assert query(pg, mode) == [("cron",)]

    identities = {json.dumps(effective_identity(n)) for n in nodes}
    assert len(identities) == 1
    instanceid, salt, secret, installed, version = json.loads(identities.pop())
    assert (instanceid, salt, secret) == tuple(IDENTITY.values())  # not the installer's random ones
    assert installed is True and version == "34.0.3.1"
    for n in nodes:
        assert n.readyz_cli() == {"ready": True, "code": "ready", "reason": "", "version": "34.0.3.1",
                                  "versionstring": "34.0.3"}


def test_install_leaves_no_config_or_secret_in_the_webroot(make_node, pg):
    node = make_node("installer")
    rc, out = node.run_init(NEXTCLOUD_ALLOW_INSTALL="1")
    assert rc == 0, out
    placeholder = (Path(__file__).parents[2] / "image/nextcloud/config/config.php").read_text()
    assert (node.webroot / "config" / "config.php").read_text() == placeholder
    assert sorted(p.name for p in (node.webroot / "config").iterdir()) == [
        "cluster.config.php", "config.php", "config.sample.php"]
    for path in node.webroot.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            for value in (DB_PASSWORD, REDIS_PASSWORD, ADMIN_PASSWORD, IDENTITY["NEXTCLOUD_SECRET"]):
                assert value.encode() not in text, f"secret found in {path}"
    # occ's scratch config (which did hold secrets) lived on tmpfs and is gone.
    assert sorted(p.name for p in node.state_dir.iterdir()) == ["state.json"]
    for value in (DB_PASSWORD, ADMIN_PASSWORD):
        assert value not in out, "a secret reached the log"
    # The double's call log (in the DB) has no password either.
    argv = query(pg, "SELECT argv::text FROM occ_double_calls")
    assert argv and all(DB_PASSWORD not in a[0] and ADMIN_PASSWORD not in a[0] for a in argv)


def test_node_without_install_permission_waits_then_joins(make_node, pg):
    waiter = make_node("waiter")
    proc = waiter.start_init()
    state = waiter.wait_state("not_installed")
    assert "NEXTCLOUD_ALLOW_INSTALL" in state["reason"]
    assert occ_calls(pg, "maintenance:install") == []
    assert query(pg, "SELECT to_regclass('public.nextcloud_cluster_state')") == [(None,)]

    install_cluster(make_node)
    assert proc.wait(timeout=30) == 0
    assert waiter.readyz_cli()["ready"] is True
    assert waiter.admin_socket.seals == 0, "a node that may not install never seals"


def test_a_failed_seal_is_logged_loudly_and_the_install_still_succeeds(make_node, pg):
    node = make_node("installer")
    rc, out = node.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_ADMIN_SEAL_SOCKET=str(node.dir / "no-such.sock"))
    assert rc == 0, out
    assert "WARNING: could not seal the admin password: every member can still read it" in out
    assert f"the socket {node.dir / 'no-such.sock'} does not answer" in out
    assert node.readyz_cli()["ready"] is True
    assert len(occ_calls(pg, "maintenance:install")) == 1
    assert ADMIN_PASSWORD not in out


def test_db_unreachable_at_start_then_ready_when_it_comes_up(make_node, pg):
    install_cluster(make_node)
    node = make_node("late")
    pg.stop()
    node.start_container()
    deadline = time.monotonic() + 20
    status, body = node.readyz_http()
    while body.get("code") != "db_unreachable" and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = node.readyz_http()
    assert status == 503 and body["ready"] is False and body["code"] == "db_unreachable", body
    assert "waiting for database" in body["reason"] and f"{pg.host}:{pg.port}" in body["reason"]
    assert DB_PASSWORD not in body["reason"]

    pg.start()
    deadline = time.monotonic() + 30
    while (status, body["ready"]) != (200, True) and time.monotonic() < deadline:
        time.sleep(0.2)
        status, body = node.readyz_http()
    assert (status, body["ready"]) == (200, True), (body, node.last_log.read_text())


def test_newer_code_without_permission_is_not_ready_and_writes_nothing(make_node, pg):
    install_cluster(make_node)
    before = db_snapshot(pg)
    nodes = [make_node(f"new{i}") for i in range(2)]
    procs = []
    for n in nodes:
        n.set_code_version(NEWER)
        procs.append(n.start_init())
    for n in nodes:
        state = n.wait_state("upgrade_pending")
        assert "34.0.4.1" in state["reason"] and "34.0.3.1" in state["reason"]
        assert "NEXTCLOUD_ALLOW_UPGRADE" in state["reason"]
    time.sleep(1.5)  # several more decision rounds under the lock
    for n in nodes:
        result = n.readyz_cli()
        assert result["ready"] is False and result["code"] == "upgrade_pending"
    assert all(p.poll() is None for p in procs), "a waiting node must keep waiting, not exit"
    assert db_snapshot(pg) == before
    assert occ_calls(pg, "upgrade") == []


def test_newer_code_with_permission_upgrades_exactly_once_across_concurrent_starters(make_node, pg):
    install_cluster(make_node)
    nodes = [make_node(f"up{i}") for i in range(NODES)]
    for n in nodes:
        n.set_code_version(NEWER)
    # Half may upgrade, half may not: the others wait for the upgrade and then join.
    with ThreadPoolExecutor(NODES) as pool:
        results = list(pool.map(
            lambda i: nodes[i].run_init(timeout=90, NEXTCLOUD_ALLOW_UPGRADE="1" if i % 2 else "0"), range(NODES)))
    for node, (rc, out) in zip(nodes, results, strict=True):
        assert rc == 0, f"{node.name}: {out}"
    upgrades = [c for c in occ_calls(pg, "upgrade") if c[3].startswith("upgraded")]
    assert len(upgrades) == 1, occ_calls(pg, "upgrade")
    assert upgrades[0][3] == "upgraded 34.0.3.1 -> 34.0.4.1"
    assert query(pg, "SELECT version, versionstring FROM nextcloud_cluster_state") == [("34.0.4.1", "34.0.4")]
    assert len(occ_calls(pg, "maintenance:install")) == 1
    for n in nodes:
        assert n.readyz_cli()["version"] == "34.0.4.1"


@pytest.mark.parametrize("override", [
    {"NEXTCLOUD_INSTANCEID": "ocother12345"},
    {"NEXTCLOUD_SECRET": "a-different-secret-value"},
    {"NEXTCLOUD_PASSWORDSALT": "a-different-salt"},
], ids=["instanceid", "secret", "passwordsalt"])
def test_identity_mismatch_is_not_ready(make_node, pg, override):
    install_cluster(make_node)
    before = db_snapshot(pg)
    stranger = make_node("stranger")
    rc, out = stranger.run_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_ALLOW_UPGRADE="1", **override)
    assert rc == 1, out
    result = stranger.readyz_cli(**override)
    assert result["ready"] is False and result["code"] == "identity_mismatch"
    assert "identity mismatch" in result["reason"]
    assert db_snapshot(pg) == before


def test_foreign_installation_is_refused(make_node, pg):
    # A database some other Nextcloud installed (e.g. the old hand-made deployment): no cluster state.
    pg.psql("CREATE TABLE oc_appconfig (appid text, configkey text, configvalue text);")
    node = make_node("n")
    rc, out = node.run_init(NEXTCLOUD_ALLOW_INSTALL="1")
    assert rc == 1, out
    assert node.state()["code"] == "foreign_install"
    assert occ_calls(pg, "maintenance:install") == []


def test_entrypoint_loads_runtime_env_file_verbatim(tmp_path):
    runtime = tmp_path / "runtime.env"
    runtime.write_text(
        "# comment\n\n  NEXTCLOUD_DB_PASSWORD=a=b \"c\" $HOME 'd'\nNEXTCLOUD_SECRET=x y\nNEXTCLOUD_BARE\n")
    out = tmp_path / "env.json"
    state = Path("/dev/shm") / f"nc-ep-{tmp_path.name}"
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_RUNTIME_ENV_FILE": str(runtime),
           "NEXTCLOUD_CLUSTER_STATE_DIR": str(state), "NEXTCLOUD_CLUSTER_LIB_DIR": str(CLUSTER_LIB),
           "NEXTCLOUD_WEBROOT": str(tmp_path), "NEXTCLOUD_BARE": "kept"}
    code = ("file_put_contents($argv[1], json_encode([getenv('NEXTCLOUD_DB_PASSWORD'), getenv('NEXTCLOUD_SECRET'),"
            " getenv('NEXTCLOUD_BARE'), getenv('PHP_INI_SCAN_DIR')]));")
    try:
        r = subprocess.run([str(ENTRYPOINT), "php", "-r", code, str(out)], env=env, capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        assert json.loads(out.read_text()) == ["a=b \"c\" $HOME 'd'", "x y", "kept", f":{state}/php"]
        assert "a=b" not in r.stderr  # values are never logged
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_entrypoint_waits_for_the_runtime_env_file_then_loads_it(tmp_path):
    # nextcloud.service starts the container before the secrets are resolved: the entrypoint must wait for the
    # file (it appears by rename, as the resolver writes it), then load it and start the web server.
    runtime = tmp_path / "secrets" / "runtime.env"
    runtime.parent.mkdir()
    out = tmp_path / "env.json"
    state = Path("/dev/shm") / f"nc-ep-wait-{tmp_path.name}"
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_RUNTIME_ENV_FILE": str(runtime), "NEXTCLOUD_RUNTIME_ENV_WAIT": "60",
           "NEXTCLOUD_CLUSTER_STATE_DIR": str(state), "NEXTCLOUD_CLUSTER_LIB_DIR": str(CLUSTER_LIB),
           "NEXTCLOUD_WEBROOT": str(tmp_path)}
    code = "file_put_contents($argv[1], json_encode(getenv('NEXTCLOUD_SECRET')));"
    try:
        proc = subprocess.Popen([str(ENTRYPOINT), "php", "-r", code, str(out)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        assert proc.poll() is None, "the entrypoint did not wait for the runtime env file"
        assert not out.exists(), "the web server started before the secrets were there"
        partial = runtime.parent / ".runtime.env.tmp"
        partial.write_text("NEXTCLOUD_SECRET=arrived-late\n")
        partial.rename(runtime)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
        assert json.loads(out.read_text()) == "arrived-late"
        assert "waiting up to 60s for" in stderr and "arrived-late" not in stderr
    finally:
        subprocess.run(["rm", "-rf", str(state)], check=False)


def test_entrypoint_gives_up_waiting_with_exit_75_and_says_where_to_look(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_RUNTIME_ENV_FILE": str(tmp_path / "never.env"),
           "NEXTCLOUD_RUNTIME_ENV_WAIT": "1", "NEXTCLOUD_CLUSTER_LIB_DIR": str(CLUSTER_LIB)}
    r = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 75, r.stderr  # systemd restarts the container, which waits again
    assert "did not appear within 1s" in r.stderr and "systemctl status nextcloud-secrets" in r.stderr
    r = subprocess.run([str(ENTRYPOINT), "true"], env={**env, "NEXTCLOUD_RUNTIME_ENV_WAIT": "soon"},
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "NEXTCLOUD_RUNTIME_ENV_WAIT=soon: expected whole seconds" in r.stderr


def test_entrypoint_rejects_bad_env_file_and_non_tmpfs_state(tmp_path):
    bad = tmp_path / "runtime.env"
    bad.write_text("GOOD=1\nBAD NAME=secret-value\n")
    env = {"PATH": "/usr/bin:/bin", "NEXTCLOUD_RUNTIME_ENV_FILE": str(bad),
           "NEXTCLOUD_CLUSTER_LIB_DIR": str(CLUSTER_LIB), "NEXTCLOUD_CLUSTER_STATE_DIR": str(tmp_path / "state")}
    r = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=20)
    assert r.returncode == 1 and "line 2: invalid variable name" in r.stderr and "secret-value" not in r.stderr

    bad.write_text("GOOD=1\n")
    on_disk = Path(__file__).resolve().parents[2] / "build" / "test-nc-state-on-disk"
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(on_disk.parent.parent)], capture_output=True, text=True).stdout
    if fs.strip() in ("tmpfs", "ramfs"):
        pytest.skip("the checkout itself is on tmpfs: no disk path to refuse")
    env["NEXTCLOUD_CLUSTER_STATE_DIR"] = str(on_disk)
    try:
        r = subprocess.run([str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True, timeout=20)
        assert r.returncode == 1 and "not tmpfs" in r.stderr
    finally:
        subprocess.run(["rm", "-rf", str(on_disk)], check=False)


def kill_node(node) -> None:
    """Power loss: the init and its occ child die at once (own process group)."""
    for p in node.procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_killed_installer_is_taken_over_by_exactly_one_node(make_node, pg):
    """Scale-in, spot reclaim, a health-check replacement: the installing node dies half-way. The lock is free at
    once (its session died); once the row's heartbeat is stale exactly one node redoes the install, from an empty
    schema, and every node joins that one installation."""
    victim = make_node("victim")
    victim.start_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="30")
    victim.wait_state("installing")
    time.sleep(0.5)  # occ is half-way: the schema exists, the admin user does not
    debris = query(pg, "SELECT 'oc_appconfig'::regclass::oid")[0][0]
    kill_node(victim)

    takers = [make_node(f"t{i}") for i in range(3)]
    joiner = make_node("joiner")  # may not install: waits, then joins what a taker installed
    joiner_proc = joiner.start_init(NEXTCLOUD_INIT_STALE_AFTER="3")
    state = joiner.wait_state("install_interrupted")
    assert "taking over once its heartbeat is 3s old" in state["reason"], state
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(
            lambda n: n.run_init(timeout=90, NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_INIT_STALE_AFTER="3"), takers))
    assert all(rc == 0 for rc, _ in results), results
    assert joiner_proc.wait(timeout=30) == 0, joiner.last_log.read_text()

    installs = occ_calls(pg, "maintenance:install")
    assert [c[2] for c in installs] == [None, 0], installs  # the killed one never finished; one redo, once
    logs = [out for _, out in results]
    redone = [out for out in logs if "did not finish: taking over" in out]
    assert len(redone) == 1 and "dropped 1 table(s) the interrupted install left" in redone[0], logs
    assert query(pg, "SELECT 'oc_appconfig'::regclass::oid")[0][0] != debris  # dropped, created afresh
    assert query(pg, "SELECT uid FROM oc_users") == [("admin",)]
    assert query(pg, "SELECT state, version FROM nextcloud_cluster_state") == [("installed", "34.0.3.1")]
    for n in [*takers, joiner]:
        assert n.readyz_cli()["ready"] is True
    # The admin password was fetched by the two nodes that installed, by no other.
    assert [n.admin_socket.fetches for n in [victim, *takers, joiner]].count(1) == 2
    assert sum(n.admin_socket.fetches for n in [victim, *takers, joiner]) == 2


def test_installer_that_loses_its_lock_connection_kills_its_occ(make_node, pg):
    """The lock's session can end while the node lives on (a network partition): the node must stop its occ at
    once, or a taker would race it. It notices at its next heartbeat, then recovers like any other node."""
    node = make_node("partitioned")
    # occ takes 8 s: it outlives the 5 s the test gives the node to kill it, and the take-over's own install is not
    # 30 s of waiting. Killed, not finished, is the call log's None below.
    node.start_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="8", NEXTCLOUD_INIT_HEARTBEAT="0.5",
                    NEXTCLOUD_INIT_STALE_AFTER="3")
    node.wait_state("installing")
    deadline = time.monotonic() + 10
    while not occ_calls(pg, "maintenance:install") and time.monotonic() < deadline:
        time.sleep(0.1)
    occ_pid = occ_calls(pg, "maintenance:install")[0][1]
    query(pg, "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted")
    deadline = time.monotonic() + 5
    while Path(f"/proc/{occ_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{occ_pid}").exists(), "occ kept installing after the node lost its cluster lock"
    node.wait_state("ready", timeout=60)  # it took over its own stale install
    installs = occ_calls(pg, "maintenance:install")
    assert [c[2] for c in installs] == [None, 0], installs
    assert "lost the cluster lock connection" in node.last_log.read_text()


def test_interrupted_upgrade_is_resumed_once_and_serving_nodes_step_back(make_node, pg):
    install_cluster(make_node)
    old = make_node("old")
    rc, out = old.run_init()
    assert rc == 0 and old.readyz_cli()["ready"] is True, out

    victim = make_node("victim")
    victim.set_code_version(NEWER)
    victim.start_init(NEXTCLOUD_ALLOW_UPGRADE="1", NEXTCLOUD_OCC_DOUBLE_DELAY="10")
    victim.wait_state("upgrading")
    time.sleep(0.5)
    result = old.readyz_cli()
    assert result["code"] == "cluster_busy" and "upgrading to 34.0.4.1" in result["reason"], result
    kill_node(victim)

    nodes = [make_node(f"r{i}") for i in range(3)]
    for n in nodes:
        n.set_code_version(NEWER)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(
            lambda n: n.run_init(timeout=60, NEXTCLOUD_ALLOW_UPGRADE="1", NEXTCLOUD_INIT_STALE_AFTER="3"), nodes))
    assert all(rc == 0 for rc, _ in results), results
    calls = occ_calls(pg, "upgrade")
    assert [c[3] for c in calls if c[2] == 0] == ["upgraded 34.0.3.1 -> 34.0.4.1"]
    assert [c[2] for c in calls if c[2] != 0] == [None]  # the killed one never finished
    assert query(pg, "SELECT state, version, target_version FROM nextcloud_cluster_state") == [
        ("installed", "34.0.4.1", None)]
    result = old.readyz_cli()
    assert result["code"] == "cluster_changed", result


def test_bounded_wait_stops_the_container_for_a_restart(make_node, pg):
    pg.stop()
    node = make_node("n")
    started = time.monotonic()
    proc = node.start_container(NEXTCLOUD_INIT_WAIT_TIMEOUT="3")
    status, body = node.readyz_http()
    assert status == 503
    assert proc.wait(timeout=20) == 75, node.last_log.read_text()  # systemd's Restart=always starts it afresh
    assert 1.5 < time.monotonic() - started < 15  # gives up when the next retry would pass the deadline
    log = node.last_log.read_text()
    assert "gave up waiting" in log and DB_PASSWORD not in log


def test_operator_occ_runs_against_a_root_owned_read_only_config(make_node, pg, tmp_path):
    """bin/nextcloud-occ, as `docker exec nextcloud nextcloud-occ status`: the image's config dir is root-owned (the
    web user can neither write nor chmod it) and occ insists on running as config.php's owner, so the wrapper
    gives occ a private config dir; the image's config is left untouched."""
    import pwd

    node = make_node("occ")
    rc, out = node.run_init(timeout=90, NEXTCLOUD_ALLOW_INSTALL="1")
    assert rc == 0, out
    www = pwd.getpwnam("www-data")
    os.chown(node.webroot, www.pw_uid, www.pw_gid)
    os.chown(node.webroot / "occ", www.pw_uid, www.pw_gid)
    cfg = node.webroot / "config"
    for f in cfg.iterdir():
        os.chown(f, 0, www.pw_gid)
        f.chmod(0o440)
    os.chown(cfg, 0, www.pw_gid)
    cfg.chmod(0o550)
    for parent in (node.webroot, *node.webroot.parents):
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)  # www-data must reach the webroot, as in the image
    node.state_dir.chmod(0o755)  # the entrypoint's state dir is readable by the web server
    for f in node.state_dir.rglob("*"):
        f.chmod(f.stat().st_mode | 0o004 | (0o001 if f.is_dir() else 0))
    before = {f.name: (f.read_bytes(), f.stat().st_uid) for f in cfg.iterdir()}
    runtime = tmp_path / "runtime.env"
    runtime.write_text("".join(f"{k}={v}\n" for k, v in node.secret_env.items()))
    runtime.chmod(0o600)
    env = node.env(NEXTCLOUD_RUNTIME_ENV_FILE=str(runtime))
    for key in node.secret_env:  # as `docker exec` sees it: secrets only in the runtime file
        env.pop(key, None)
    proc = subprocess.run([str(ENTRYPOINT.parent / "nextcloud-occ"), "status", "--output=json"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status["installed"] is True and status["versionstring"] == "34.0.3", status
    assert {f.name: (f.read_bytes(), f.stat().st_uid) for f in cfg.iterdir()} == before
    assert not list(Path("/dev/shm").glob("nextcloud-occ.*")), "the private config dir was not removed"


def _command_lines() -> dict[int, str]:
    found = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def test_no_password_in_any_command_line_during_install_and_join(make_node, pg):
    """/proc/<pid>/cmdline is readable by every local user: no secret may ever be in an argument list, not while
    occ installs (the DB and admin passwords reach it on stdin) and not while nodes join."""
    canaries = {"db": DB_PASSWORD, "admin": ADMIN_PASSWORD, "redis": REDIS_PASSWORD,
                "salt": IDENTITY["NEXTCLOUD_PASSWORDSALT"], "secret": IDENTITY["NEXTCLOUD_SECRET"]}
    installer = make_node("installer")
    joiners = [make_node(f"j{i}") for i in range(2)]
    procs = [installer.start_init(NEXTCLOUD_ALLOW_INSTALL="1", NEXTCLOUD_OCC_DOUBLE_DELAY="3")]
    procs += [j.start_init() for j in joiners]
    leaks: dict[str, str] = {}
    saw_occ_install = False
    deadline = time.monotonic() + 90
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        for line in _command_lines().values():
            saw_occ_install = saw_occ_install or "occ maintenance:install" in line
            for name, value in canaries.items():
                if value in line:
                    leaks[name] = line
        time.sleep(0.02)
    assert all(p.poll() == 0 for p in procs), [n.last_log.read_text() for n in (installer, *joiners)]
    assert saw_occ_install, "the scan never saw occ running: it cannot have looked during the install"
    shown = {k: v.replace(canaries[k], f"<{k}>") for k, v in leaks.items()}
    assert not leaks, f"secrets in command lines: {shown}"
    assert len([c for c in occ_calls(pg, "maintenance:install") if c[2] == 0]) == 1
