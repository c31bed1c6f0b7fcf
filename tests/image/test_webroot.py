"""The served code: in the image, outside any volume, read-only for the web server, and nothing copied when the
container is created (the base image's VOLUME /var/www/html would otherwise take a copy of the whole tree at
every boot and restart, and `docker rm --force` would leave each copy behind)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.webroot, pytest.mark.live]

CONTAINER = "nextcloud"
DERIVED = "nextcloud-cluster:current"
WEB_USER = "www-data"


def _image_config(host, image: str) -> dict:
    return json.loads(host.check_output(f"docker image inspect --format '{{{{json .Config}}}}' {image}"))


def test_webroot_is_outside_every_volume_the_image_declares(host, webroot):
    volumes = sorted(_image_config(host, DERIVED).get("Volumes") or {})
    covered = [v for v in volumes if webroot == v or webroot.startswith(v.rstrip("/") + "/")]
    assert not covered, f"the webroot {webroot} lies in the image's volume(s) {covered}: copied at every start"


def test_container_has_no_volume(host):
    mounts = json.loads(host.check_output(f"docker inspect --format '{{{{json .Mounts}}}}' {CONTAINER}"))
    volumes = [m for m in mounts if m.get("Type") == "volume"]
    assert not volumes, f"the container was created with volume(s) (a copy of the image's tree each): {volumes}"


def test_no_volume_left_on_the_instance(host):
    left = host.check_output("docker volume ls --quiet").split()
    assert not left, f"Docker volumes on the instance (orphaned copies of the webroot?): {left}"


def test_start_removes_a_leftover_container_with_its_volumes(host):
    # A container left by an unclean stop, holding the anonymous volume the base image's VOLUME makes without the
    # tmpfs: the next start removes both (without the volumes they would pile up, one per unclean stop) and runs.
    # Restarts this instance's container; it is ready again before the test ends.
    old_id = host.check_output(f"docker inspect --format '{{{{.Id}}}}' {CONTAINER}")
    host.check_output("systemctl stop nextcloud.service")
    try:
        gone = time.monotonic() + 60  # --rm: the daemon removes the stopped container asynchronously
        while host.run(f"docker inspect --format '{{{{.Id}}}}' {CONTAINER}").rc == 0 and time.monotonic() < gone:
            time.sleep(1)
        leftover = host.check_output(f"docker create --name {CONTAINER} {DERIVED} true")
        assert host.check_output("docker volume ls --quiet").split(), "docker create made no volume to leave behind"
    finally:
        host.check_output("systemctl start nextcloud.service")
    deadline = time.monotonic() + 300
    while True:
        running = host.run(f"docker inspect --format '{{{{.Id}}}} {{{{.State.Running}}}}' {CONTAINER}").stdout.split()
        ready = host.run("curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1/readyz").stdout
        if running[1:] == ["true"] and ready == "200":
            break
        assert time.monotonic() < deadline, f"not running and ready 300 s after the start: {running} /readyz {ready}"
        time.sleep(2)
    assert running[0] not in (leftover, old_id), "the leftover (or the old) container is the one running"
    left = host.check_output("docker volume ls --quiet").split()
    assert not left, f"the leftover container's volume stayed behind: {left}"


def test_code_is_read_only_for_the_web_server(host, webroot):
    script = f'find "{webroot}" -path "{webroot}/data" -prune -o -writable -print'
    out = host.run(f"docker exec -u {WEB_USER} {CONTAINER} sh -c '{script}'")
    assert out.rc == 0, f"docker exec failed: {out.stderr.strip()}"
    writable = out.stdout.split()
    assert not writable, f"{len(writable)} paths of the code are writable by {WEB_USER}, e.g. {writable[:5]}"


def test_data_dir_is_writable_by_the_web_server(host, webroot):
    # .ncdata: the marker Nextcloud 30+ refuses to serve without (every node, not only the one that installed).
    out = host.run(f"docker exec -u {WEB_USER} {CONTAINER} test -w {webroot}/data -a -f {webroot}/data/.ncdata")
    assert out.rc == 0, f"{webroot}/data is not a writable data directory with .ncdata for {WEB_USER}"


@pytest.mark.live
@pytest.mark.parametrize("path", ["/data/.ncdata", "/data/", "/data/.ocdata"])
def test_the_data_directory_is_never_served(host, path):
    code = host.run(f"curl -sS --max-time 20 -o /dev/null -w '%{{http_code}}' http://127.0.0.1{path}").stdout
    assert code in ("403", "404"), f"GET {path} answered {code}: the data directory must be denied on every node"


def test_apache_serves_the_webroot(host, webroot):
    # robots.txt ships at the top of every Nextcloud release: what Apache answers must be the webroot's copy.
    served = host.run("curl -sS --max-time 20 -w '\\n%{http_code}' http://127.0.0.1/robots.txt")
    body, _, code = served.stdout.rpartition("\n")
    on_disk = host.run(f"docker exec {CONTAINER} cat {webroot}/robots.txt")
    assert code == "200" and on_disk.rc == 0, f"robots.txt: HTTP {code}, in {webroot}: {on_disk.stderr.strip()}"
    assert body.rstrip("\n") == on_disk.stdout.rstrip("\n"), "Apache serves another robots.txt than the webroot's"
