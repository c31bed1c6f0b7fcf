"""SSH and account hardening, and what listens: key-only SSH, no passwords, nothing but the expected ports."""

from __future__ import annotations

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
