"""The throwaway services' pieces that need no server: the TLS certificates, the managed-process base."""

from __future__ import annotations

import contextlib
import ssl
import sys

import pytest

from infra.errors import PipelineError
from infra.localtwin.processes import ManagedProcess
from infra.localtwin.services import ServiceError
from infra.localtwin.services.tls import make_server_certificates


def _handshake(certs, trusted_ca, name: str) -> dict:
    """A TLS handshake in memory between the server's certificate and a client trusting ``trusted_ca``."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.cert, certs.key)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ssl.create_default_context(cafile=str(trusted_ca)).wrap_bio(to_client, to_server, server_hostname=name)
    srv = server.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        for side in (client, srv):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
    return client.getpeercert()


def test_the_server_certificate_verifies_for_localhost_and_127_0_0_1_against_the_throwaway_ca(tmp_path):
    certs = make_server_certificates(tmp_path / "tls")
    assert (certs.key.stat().st_mode & 0o777) == 0o600
    for name in ("localhost", "127.0.0.1"):
        cert = _handshake(certs, certs.ca, name)
        assert cert["subjectAltName"] == (("DNS", "localhost"), ("IP Address", "127.0.0.1"))
    # Kept when present: a restarted server presents the certificate its clients already trust.
    assert make_server_certificates(tmp_path / "tls").ca.read_bytes() == certs.ca.read_bytes()


def test_a_client_trusting_another_ca_refuses_the_server(tmp_path):
    certs = make_server_certificates(tmp_path / "one")
    other = make_server_certificates(tmp_path / "two")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, other.ca, "localhost")


def test_a_name_the_certificate_does_not_hold_is_refused(tmp_path):
    certs = make_server_certificates(tmp_path / "tls")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, certs.ca, "example.org")


def test_service_errors_are_pipeline_errors():
    assert issubclass(ServiceError, PipelineError) and ServiceError("x").exit_code == 1


class _Sleeper(ManagedProcess):
    """A child that writes a line to its log, then either serves (ready file) or exits."""

    error = ServiceError
    stop_timeout = 2.0

    def __init__(self, tmp_path, *, exit_status: int | None, timeout: float = 5.0):
        self.dir, self.exit_status, self.timeout, self.closed = tmp_path, exit_status, timeout, 0

    @property
    def log_path(self):
        return self.dir / "child.log"

    def start(self):
        code = "print('child says hello', flush=True)\n"
        serve = "import time; time.sleep(60)"
        code += serve if self.exit_status is None else f"raise SystemExit({self.exit_status})"
        self.launch([sys.executable, "-c", code], log=self.log_path)
        self.wait_until(lambda: False, timeout=self.timeout, interval=0.05, exited="the child exited ({status})",
                        timed_out="the child never served")

    def close(self):
        self.closed += 1
        super().close()


def test_a_process_that_exits_at_start_fails_with_its_status_and_log_tail(tmp_path):
    service = _Sleeper(tmp_path, exit_status=3)
    with pytest.raises(ServiceError, match=r"the child exited \(3\):\nchild says hello"), service:
        pass
    assert service.closed == 1 and not service.running


def test_a_process_that_never_serves_is_stopped_and_fails_with_its_log_tail(tmp_path):
    service = _Sleeper(tmp_path, exit_status=None, timeout=0.5)
    with pytest.raises(ServiceError, match=r"never served\nchild says hello"):
        service.__enter__()
    assert service._proc is None and service.closed == 1


def test_stop_ends_the_child_and_restart_starts_a_new_one(tmp_path):
    service = _Sleeper(tmp_path, exit_status=None, timeout=0.2)
    service.launch([sys.executable, "-c", "import time; time.sleep(60)"])
    first = service._proc
    assert service.running
    service.stop()
    assert first.poll() is not None and not service.running
    service.stop()  # idempotent
    service.start = lambda: service.launch([sys.executable, "-c", "import time; time.sleep(60)"])
    service.restart()
    assert service.running and service._proc is not first
    service.close()
    assert not service.running
