"""The derived Nextcloud image and its service: the recorded image, enabled units, a healthy, ready container."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.nextcloud

CONTAINER = "nextcloud"
WEB_USER = "www-data"


def _tags(expected: dict) -> list[str]:
    return ["nextcloud-cluster:current", f"nextcloud-cluster:{expected['fingerprint'][:12]}"]


@pytest.mark.parametrize("unit", ["nextcloud.service", "nextcloud-secrets.service"])
def test_units_enabled(host, unit):
    out = host.run(f"systemctl is-enabled {unit}")
    assert out.stdout.strip() == "enabled", f"{unit} is {out.stdout.strip() or out.stderr.strip()!r}, not enabled"


# Live: the file-level suite's target (tests/integration/test_image_suite_negative.py) enables only the two above.
@pytest.mark.live
@pytest.mark.parametrize("unit", ["nextcloud-admin-password.socket", "nextcloud-admin-seal.socket"])
def test_admin_sockets_enabled_and_listening_in_the_containers_directory(host, unit):
    out = host.run(f"systemctl is-enabled {unit}")
    assert out.stdout.strip() == "enabled", f"{unit} is {out.stdout.strip() or out.stderr.strip()!r}, not enabled"
    listens = host.check_output(f"systemctl show {unit} -p Listen --value")
    assert listens.startswith("/run/nextcloud-admin/"), f"{unit} listens on {listens!r}, not where the container looks"


@pytest.mark.live
@pytest.mark.parametrize("tag_index", [0, 1], ids=["current", "fingerprint"])
def test_derived_image_has_recorded_id(host, version_info, expected, tag_index):
    tag = _tags(expected)[tag_index]
    out = host.run(f"docker image inspect --format '{{{{.Id}}}}' {tag}")
    assert out.rc == 0, f"image {tag} is not in the local image store: {out.stderr.strip()}"
    assert out.stdout.strip() == version_info["nextcloud_image_id"], (
        f"{tag} is {out.stdout.strip()}, version-info nextcloud_image_id is {version_info['nextcloud_image_id']}"
    )


@pytest.mark.live
def test_nextcloud_service_active(host):
    assert host.service("nextcloud").is_running, "nextcloud.service is not active"


@pytest.mark.live
def test_container_output_logged_once(host):
    # The unit's journal carries the container's output (docker run is attached); dockerd must not log it again.
    unit_lines = host.run("journalctl -b --no-pager -o cat -u nextcloud.service | grep -c nextcloud-cluster-entrypoint")
    assert unit_lines.stdout.strip() not in ("", "0"), "the container's output is not in journalctl -u nextcloud"
    copies = host.run(f"journalctl -b --no-pager -o cat CONTAINER_NAME={CONTAINER} | grep -c . || true")
    assert copies.stdout.strip() == "0", (
        f"dockerd logged {copies.stdout.strip()} lines of the container a second time (CONTAINER_NAME={CONTAINER})"
    )


@pytest.mark.live
def test_secrets_unit_succeeded(host):
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            "systemctl show nextcloud-secrets.service -p Result -p ExecMainStatus -p ExecMainExitTimestampMonotonic"
        ).splitlines()
    )
    assert props["ExecMainExitTimestampMonotonic"] != "0", "nextcloud-secrets.service never ran"
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), f"nextcloud-secrets.service: {props}"


@pytest.mark.live
def test_container_runs_recorded_image_and_is_healthy(host, version_info):
    out = host.run(f"docker inspect --format '{{{{json .}}}}' {CONTAINER}")
    assert out.rc == 0, f"no container {CONTAINER!r}: {out.stderr.strip()}"
    state = json.loads(out.stdout)
    assert state["Image"] == version_info["nextcloud_image_id"], "container runs another image than the baked one"
    health = (state["State"].get("Health") or {}).get("Status")
    assert health == "healthy", f"container health is {health!r} (no HEALTHCHECK?)"


@pytest.mark.live
def test_readiness_endpoint(host):
    out = host.run("curl -sS --max-time 20 -o - -w '\\n%{http_code}' http://127.0.0.1/readyz")
    assert out.rc == 0, f"curl failed: {out.stderr.strip()}"
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", f"/readyz answered {code}: {body[:300]}"
    doc = json.loads(body)
    assert doc.get("ready") is True, f"/readyz JSON says {doc}"


@pytest.mark.live
def test_webroot_prepopulated_in_image(host, version_info, webroot):
    # A fresh container from the image, not the running one: the code must be in the image, not copied at boot.
    image = version_info["nextcloud_image_id"]
    out = host.run(
        f"docker run --rm --network none --entrypoint /bin/sh {image} -c "
        f"'test -s {webroot}/version.php && test -s {webroot}/index.php && echo present'"
    )
    assert out.stdout.strip() == "present", (
        f"{webroot} in image {image} lacks version.php/index.php (would be rsynced at boot): {out.stderr.strip()}"
    )


@pytest.mark.live
def test_config_not_writable_by_web_user(host, webroot):
    out = host.run(
        f"docker exec -u {WEB_USER} {CONTAINER} sh -c "
        f"'test -d {webroot}/config || echo NO-CONFIG-DIR; find {webroot}/config -writable'"
    )
    assert out.rc == 0, f"docker exec failed: {out.stderr.strip()}"
    writable = out.stdout.split()
    assert writable == [], f"writable by {WEB_USER} inside the container: {writable}"


@pytest.mark.live
def test_config_not_owned_by_web_user(host, webroot):
    # The owner of a read-only file can chmod it writable again: a compromised PHP process would.
    out = host.run(f"docker exec {CONTAINER} find {webroot}/config -user {WEB_USER}")
    assert out.rc == 0, f"docker exec failed: {out.stderr.strip()}"
    owned = out.stdout.split()
    assert owned == [], f"owned by {WEB_USER} (can be made writable with chmod): {owned}"


@pytest.mark.live
def test_nextcloud_itself_serves_on_this_node(host):
    # Nextcloud's own verdict, on every node (the one that installed and every one that joined): status.php 200 and
    # occ working. A node without the data directory marker answers 503 here while the rest can look healthy.
    out = host.run("curl -sS --max-time 60 -w '\\n%{http_code}' http://127.0.0.1/status.php")
    body, _, code = out.stdout.rpartition("\n")
    assert code == "200", f"status.php answered {code}: {body[:300]}"
    status = json.loads(body)
    assert status["installed"] is True and status["maintenance"] is False and status["needsDbUpgrade"] is False, status
    occ = host.run(f"docker exec {CONTAINER} nextcloud-occ status --output=json")
    assert occ.rc == 0, f"occ status failed on this node ({occ.rc}): {(occ.stdout + occ.stderr)[-800:]}"


@pytest.mark.live
def test_this_node_holds_a_serverid(host):
    state = json.loads(host.check_output(f"docker exec {CONTAINER} cat /dev/shm/nextcloud-cluster/state.json"))
    assert isinstance(state.get("serverid"), int) and 1 <= state["serverid"] <= 511, state
