"""SSH and account hardening, and what listens: key-only SSH, no passwords, nothing but the expected ports; the
container's capabilities, privileges and limits as `docker inspect` and the kernel report them."""

from __future__ import annotations

import json

import pytest
from image_suite_support import port_list

pytestmark = pytest.mark.hardening

LOCKED_PREFIXES = ("!", "*")  # '!...' locked, '*' no password; '' would be "no password needed"


@pytest.mark.parametrize(
    ("option", "expected"),
    [("passwordauthentication", "no"), ("permitemptypasswords", "no"), ("kbdinteractiveauthentication", "no")],
)
def test_sshd_effective_option(host, option, expected):
    # sshd -T prints the effective configuration (drop-ins and Match-free defaults resolved).
    out = host.run("sshd -T 2>&1 || /usr/sbin/sshd -T 2>&1")
    settings = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert option in settings, f"sshd -T did not report {option}: {out.stdout[-300:]}"
    assert settings[option] == expected, f"sshd {option} is {settings[option]!r}, expected {expected!r}"


def test_no_account_has_a_password(host):
    offenders = []
    for line in host.file("/etc/shadow").content_string.splitlines():
        fields = line.split(":")
        if len(fields) < 2:
            continue
        user, pw = fields[0], fields[1]
        if pw == "" or not pw.startswith(LOCKED_PREFIXES):
            offenders.append(f"{user} ({'empty' if pw == '' else 'password hash'})")
    assert not offenders, f"accounts that accept a password: {offenders}"


def _listeners(host, proto: str) -> set[tuple[str, int]]:
    flag = "t" if proto == "tcp" else "u"
    found = set()
    for line in host.check_output(f"ss -H -n -l -{flag}").splitlines():
        local = line.split()[3]
        address, _, port = local.rpartition(":")
        address = address.strip("[]").split("%")[0]
        if address.startswith("127.") or address == "::1":
            continue
        found.add((address, int(port)))
    return found


@pytest.mark.live
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_only_expected_ports_listen(host, request, proto):
    allowed = port_list(request.config.getoption(f"--expected-{proto}-ports"), f"--expected-{proto}-ports")
    unexpected = sorted(f"{a}:{p}" for a, p in _listeners(host, proto) if p not in allowed)
    assert not unexpected, f"unexpected {proto} listeners on non-loopback addresses: {unexpected} (allowed {allowed})"


@pytest.mark.live
def test_host_keys_are_modern_types_only(host):
    # cloud-init generates them at first boot (image/rootfs/etc/cloud/cloud.cfg.d/50-nextcloud-image.cfg).
    found = sorted(
        name
        for name in host.check_output("ls -1 /etc/ssh").split()
        if name.startswith("ssh_host_") and name.endswith("_key")
    )
    assert found == ["ssh_host_ecdsa_key", "ssh_host_ed25519_key"], f"SSH host keys: {found}"


@pytest.mark.live
def test_a_client_cannot_choose_the_address_nextcloud_sees(host):
    # The official image believes X-Real-IP from any private-range peer; this one believes X-Forwarded-For only from
    # the load balancer's subnets. Loopback is not one of them: both forged headers must be ignored, and the access
    # log (%h: what mod_remoteip made REMOTE_ADDR, the address PHP and Nextcloud see) shows the TCP peer.
    marker = "forged-address-probe"
    host.run(f"curl -sS --max-time 20 -o /dev/null -H 'X-Real-IP: 203.0.113.66' "
             f"-H 'X-Forwarded-For: 203.0.113.77, 198.51.100.9' 'http://127.0.0.1/robots.txt?{marker}'")
    logged = host.run(f"journalctl -b --no-pager -o cat -u nextcloud.service | grep -F '{marker}' | tail -n 1")
    assert logged.stdout.strip(), "the probe's access-log line is not in the journal"
    assert logged.stdout.split(" ", 1)[0] == "127.0.0.1", f"Apache saw a client-chosen address: {logged.stdout}"


# ---- the container: least privilege and bounded resources (image/rootfs/etc/nextcloud-image/container-runtime.env) --
CONTAINER_CAPABILITIES = {"CHOWN": 0, "DAC_OVERRIDE": 1, "KILL": 5, "SETGID": 6, "SETUID": 7, "NET_BIND_SERVICE": 10}
CONTAINER_PIDS_LIMIT = 1024


def _container_host_config(host) -> dict:
    out = host.run("docker inspect --format '{{json .HostConfig}}' nextcloud")
    assert out.rc == 0, f"docker inspect nextcloud failed: {out.stderr.strip()}"
    return json.loads(out.stdout)


def _strip_cap_prefix(caps) -> list[str]:
    return sorted(c.upper().removeprefix("CAP_") for c in caps or [])


@pytest.mark.live
def test_the_container_drops_every_capability_but_the_needed_ones(host):
    config = _container_host_config(host)
    assert _strip_cap_prefix(config.get("CapDrop")) == ["ALL"], f"CapDrop is {config.get('CapDrop')}"
    added = _strip_cap_prefix(config.get("CapAdd"))
    assert added == sorted(CONTAINER_CAPABILITIES), f"CapAdd is {config.get('CapAdd')}"
    assert not config.get("Privileged"), "the container is privileged"


@pytest.mark.live
def test_the_container_s_processes_hold_only_those_capabilities_and_cannot_gain_more(host):
    # What the kernel says of PID 1 (the entrypoint, root in the container): the effective set and the bounding set
    # (what no child can exceed), and no_new_privs (no setuid binary or file capability raises a process).
    status = host.run("docker exec nextcloud grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/1/status")
    assert status.rc == 0, status.stderr
    fields = dict(line.split(":\t", 1) for line in status.stdout.splitlines())
    want = sum(1 << bit for bit in CONTAINER_CAPABILITIES.values())
    assert int(fields["CapBnd"], 16) == want, f"bounding set {fields['CapBnd']}, expected {want:016x}"
    assert int(fields["CapEff"], 16) == want, f"effective set {fields['CapEff']}, expected {want:016x}"
    assert fields["NoNewPrivs"].strip() == "1", "no-new-privileges is not set on the container's processes"


@pytest.mark.live
def test_the_container_has_no_new_privileges_a_pids_limit_and_no_core_dumps(host):
    config = _container_host_config(host)
    assert any(opt.split(":")[0].split("=")[0] == "no-new-privileges" and not opt.endswith(("false", "=0"))
               for opt in config.get("SecurityOpt") or []), f"SecurityOpt is {config.get('SecurityOpt')}"
    assert config.get("PidsLimit") == CONTAINER_PIDS_LIMIT, f"PidsLimit is {config.get('PidsLimit')}"
    assert [(u["Name"], u["Soft"], u["Hard"]) for u in config.get("Ulimits") or []] == [("core", 0, 0)]
    core = host.run("docker exec nextcloud sh -c 'ulimit -c; ulimit -Hc'")
    assert core.stdout.split() == ["0", "0"], f"core size limit in the container: {core.stdout!r}"


@pytest.mark.live
def test_the_container_s_memory_limit_leaves_the_host_its_reserve_and_holds_the_workers(host):
    memtotal = int(host.check_output("awk '$1 == \"MemTotal:\" { print int($2 / 1024) }' /proc/meminfo"))
    expected = memtotal - max(512, memtotal // 8)
    config = _container_host_config(host)
    assert config.get("Memory") == expected * 1048576, f"Memory is {config.get('Memory')}, expected {expected} MiB"
    assert host.check_output("docker exec nextcloud cat /sys/fs/cgroup/memory.max") == str(expected * 1048576)
    sizing = dict(line.split("=", 1) for line in host.check_output("docker exec nextcloud nextcloud-size-workers")
                  .splitlines())
    workers = int(sizing["NEXTCLOUD_APACHE_MAX_WORKERS"])
    assert workers * 100 + 512 <= expected, f"{workers} workers at 100 MiB and 512 MiB headroom exceed {expected} MiB"
