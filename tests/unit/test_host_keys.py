"""The canary's SSH host keys: read from its console output (cloud-init's block), then the only keys trusted, by
test-ami's own SSH and by testinfra's. The SSH side runs against a paramiko server on loopback that plays the
canary's sshd (or an impostor with another key)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from infra.aws.canary_access import AccessFailed, HostKeyMismatch, SshAccess, Target
from infra.host_keys import HostKey, console_host_keys

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "image"))
from image_suite_support import honour_strict_host_key_checking  # noqa: E402


def public_line(private) -> str:
    return private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()


ECDSA = public_line(ec.generate_private_key(ec.SECP256R1()))
ED25519 = public_line(ed25519.Ed25519PrivateKey.generate())
RSA = public_line(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def console(*keys: str, end: bool = True, eol: str = "\r\n") -> str:
    """A Debian cloud instance's console around cloud-init's final stage: the fingerprints (through
    ``logger -s``), then the keys as tools/write-ssh-key-fingerprints prints them, between kernel lines."""
    lines = [
        "[    0.000000] Linux version 6.1.0-28-cloud-amd64 (debian-kernel@lists.debian.org)",
        "[   21.904512] cloud-init[611]: Cloud-init v. 22.4.2 running 'modules:final' at Sat, 05 Dec 2026 23:01:02",
        "<14>Dec  5 23:01:03 cloud-init: #############################################################",
        "<14>Dec  5 23:01:03 cloud-init: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
        "<14>Dec  5 23:01:03 cloud-init: 256 SHA256:J1qTKa9c2E8Q2w1lTzqkD7ZC9kXW0pC1bJkq0YgFf3I root@ip-10-0-1-23 "
        "(ECDSA)",
        "<14>Dec  5 23:01:03 cloud-init: -----END SSH HOST KEY FINGERPRINTS-----",
        "<14>Dec  5 23:01:03 cloud-init: #############################################################",
        "-----BEGIN SSH HOST KEY KEYS-----",
        *(f"{k} root@ip-10-0-1-23" for k in keys),
        *(["-----END SSH HOST KEY KEYS-----"] if end else []),
        "[   22.310004] cloud-init[611]: Cloud-init v. 22.4.2 finished at Sat, 05 Dec 2026 23:01:03 +0000.",
        "",
        "Debian GNU/Linux 12 ip-10-0-1-23 ttyS0",
    ]
    return eol.join(lines)


def key(line: str) -> HostKey:
    return HostKey(*line.split()[:2])


# ---- the console parser ---------------------------------------------------------------------------------------
def test_both_key_types_of_the_image_are_read_in_order():
    assert console_host_keys(console(ECDSA, ED25519)) == [key(ECDSA), key(ED25519)]
    assert console_host_keys(console(ED25519, eol="\n")) == [key(ED25519)]
    assert console_host_keys(console(RSA, ED25519)) == [key(RSA), key(ED25519)]  # cloud-init's default adds RSA


@pytest.mark.parametrize("text", [
    "",
    "Linux version 2.6.16-xenU (builder@patchbat.amazonsa)\nIRQ lockup detection disabled\n",  # moto's console
    console(ECDSA, ED25519, end=False),  # cut while being written: not yet trusted
    console(),  # a block without keys
], ids=["empty", "no block", "no END line", "empty block"])
def test_no_complete_block_means_no_keys(text):
    assert console_host_keys(text) == []


def test_garbage_and_cut_lines_inside_the_block_are_not_keys():
    kind, blob = ED25519.split()
    noise = [
        "[   22.000001] random: crng init done",  # the kernel writes in between
        f"{kind} {blob[:-12]}",  # cut short: its blob no longer decodes to an ed25519 key
        f"ssh-rsa {blob}",  # a blob whose own type is not the line's
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP",  # not a type OpenSSH still makes
        f"{ECDSA.split()[0]} {ECDSA.split()[1][:60]}",  # an ECDSA key cut short
        f"{kind} not*base64",
    ]
    assert console_host_keys(console(*noise, ECDSA)) == [key(ECDSA)]


def test_after_a_reboot_the_last_block_counts_and_a_key_is_listed_once():
    other = public_line(ed25519.Ed25519PrivateKey.generate())
    text = console(ED25519) + "\r\n" + console(other, other, ECDSA)
    assert console_host_keys(text) == [key(other), key(ECDSA)]


# ---- SSH trusts only those keys -------------------------------------------------------------------------------
class FakeSshd:
    """A loopback SSH server that accepts any public key of user admin, presenting ``host_key``."""

    def __init__(self, host_key: paramiko.PKey):
        self.host_key = host_key
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        class Server(paramiko.ServerInterface):
            def get_allowed_auths(self, username):
                return "publickey"

            def check_auth_publickey(self, username, key):
                return paramiko.AUTH_SUCCESSFUL if username == "admin" else paramiko.AUTH_FAILED

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self.transports.append(transport)
            try:
                transport.start_server(server=Server())
            except (paramiko.SSHException, EOFError):
                continue

    def close(self) -> None:
        self.listener.close()
        for t in self.transports:
            t.close()


@pytest.fixture
def canary_sshd():
    host_key = paramiko.ECDSAKey.generate()
    server = FakeSshd(host_key)
    yield server, HostKey(host_key.get_name(), host_key.get_base64())
    server.close()


@pytest.fixture
def client_key(tmp_path) -> Path:
    path = tmp_path / "id_ecdsa"
    paramiko.ECDSAKey.generate().write_private_key_file(str(path))
    return path


def target(port: int, key_file: Path, host_keys: tuple[HostKey, ...]) -> Target:
    return Target("i-0123456789abcdef0", "127.0.0.1", "eu-central-1", "public_ip", key_file, host_keys=host_keys,
                  port=port)


def test_ssh_reaches_the_canary_whose_key_its_console_showed(canary_sshd, client_key):
    server, shown = canary_sshd
    access = SshAccess(target(server.port, client_key, (key(ED25519), shown)))
    try:
        access.wait_ssh(time.monotonic() + 20)
        assert access._client.get_transport().is_authenticated()
        config = access.ssh_config.read_text()
        assert "StrictHostKeyChecking yes" in config and "accept-new" not in config
        assert access.known_hosts.read_text().splitlines() == [
            f"[127.0.0.1]:{server.port} {ED25519.split()[0]} {ED25519.split()[1]}",
            f"[127.0.0.1]:{server.port} {shown.key_type} {shown.blob}"]
    finally:
        access.close()


def test_a_key_the_console_did_not_show_is_refused_at_once(canary_sshd, client_key):
    server, _ = canary_sshd
    access = SshAccess(target(server.port, client_key, (key(ECDSA),)))  # same type, another key: an impostor
    started = time.monotonic()
    try:
        with pytest.raises(HostKeyMismatch, match="console output did not show") as refused:
            access.wait_ssh(time.monotonic() + 60)
        assert time.monotonic() - started < 15, "a wrong key is not retried until the timeout"
        assert "ecdsa-sha2-nistp256" in str(refused.value) and "SHA256:" in str(refused.value)
        assert access._client is None
    finally:
        access.close()


def test_without_console_keys_the_first_key_is_kept_for_testinfra(canary_sshd, client_key):
    server, shown = canary_sshd
    access = SshAccess(target(server.port, client_key, ()))  # --accept-new-host-key
    try:
        access.wait_ssh(time.monotonic() + 20)
        assert "StrictHostKeyChecking accept-new" in access.ssh_config.read_text()
        assert shown.blob in access.known_hosts.read_text()
    finally:
        access.close()


def test_a_port_that_never_answers_is_a_timeout_not_a_mismatch(client_key):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    access = SshAccess(target(port, client_key, (key(ED25519),)))
    started = time.monotonic()
    try:
        with pytest.raises(AccessFailed, match="did not answer before the timeout"):
            access.wait_ssh(started + 0.5)
    finally:
        access.close()
    assert time.monotonic() - started < 3, "the wait ends at its deadline, not a retry interval after it"


# ---- testinfra honours the same ssh_config --------------------------------------------------------------------
@pytest.fixture
def testinfra_honouring(monkeypatch):
    from testinfra.backend import paramiko as backend

    monkeypatch.setattr(backend.ParamikoBackend, "_load_ssh_config", backend.ParamikoBackend._load_ssh_config)
    honour_strict_host_key_checking()


def connect_with_testinfra(ssh_config: Path):
    import testinfra

    return testinfra.get_host("paramiko://canary", ssh_config=str(ssh_config)).backend.client


def test_testinfra_reaches_the_canary_with_the_shown_key(testinfra_honouring, canary_sshd, client_key):
    server, shown = canary_sshd
    access = SshAccess(target(server.port, client_key, (shown,)))
    try:
        client = connect_with_testinfra(access.ssh_config)
        assert client.get_transport().is_authenticated()
        client.close()
    finally:
        access.close()


def test_testinfra_refuses_a_key_the_console_did_not_show(testinfra_honouring, canary_sshd, client_key):
    server, _ = canary_sshd
    access = SshAccess(target(server.port, client_key, (key(ECDSA),)))
    try:
        with pytest.raises(paramiko.BadHostKeyException):
            connect_with_testinfra(access.ssh_config)
    finally:
        access.close()
