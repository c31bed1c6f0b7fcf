"""The drill's group follows the instance watchdog's busy rule: a node that gives /livez no answer while it is busy
serving (its queue full, Apache on the CPU) is not counted; a hung one is; and the group's health thread ends
quietly when the drill is torn down in the middle of a replacement."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from infra.drill.asg import Group, LivenessRule
from infra.drill.fleet import Fleet


class FakeInstance:
    """Stands in for a twin Instance's ssh(): answers what the guest's `liveness-watchdog --busy-check` would."""

    def __init__(self, answer: dict | None, returncode: int = 0):
        self.answer, self.returncode, self.commands = answer, returncode, []

    def ssh(self, command, timeout=60):
        self.commands.append(command)
        return subprocess.CompletedProcess(command, self.returncode, json.dumps(self.answer), "ssh: refused")


@pytest.fixture
def silent_port():
    """A port that accepts connections into its queue and never answers (a saturated Apache, from outside)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s.getsockname()[1]
    s.close()


@pytest.fixture
def failing_port():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def probe(member, logs):
    fleet = SimpleNamespace(log=logs.append)
    return Fleet._probe_live(fleet, member, 0.5)


BUSY = {"busy": True, "backlog": 7, "cpu_s": 0.9, "detail": "7 connection(s) wait to be accepted on port 80"}
HUNG = {"busy": False, "backlog": 7, "cpu_s": 0.0, "detail": "... : not progressing"}


def test_no_answer_from_a_busy_node_is_live(silent_port):
    inst, logs = FakeInstance(BUSY), []
    assert probe(SimpleNamespace(name="nc-drill-1", http_port=silent_port, instance=inst), logs) is True
    assert inst.commands == ["sudo /usr/local/libexec/nextcloud-image/liveness-watchdog --busy-check"]
    assert "nc-drill-1 gave no /livez answer in 0 s but is busy, not hung (7 connection(s)" in logs[0]


@pytest.mark.parametrize("answer, rc", [(HUNG, 0), (None, 255), (BUSY, 1)])
def test_no_answer_from_a_hung_or_unreachable_node_fails(silent_port, answer, rc):
    inst = FakeInstance(answer, rc)
    assert probe(SimpleNamespace(name="nc-drill-1", http_port=silent_port, instance=inst), []) is False


def test_an_answer_that_says_not_live_fails_without_asking_the_guest(failing_port):
    inst = FakeInstance(BUSY)
    assert probe(SimpleNamespace(name="nc-drill-1", http_port=failing_port, instance=inst), []) is False
    assert inst.commands == []


def test_the_health_thread_ends_quietly_when_torn_down_mid_replacement():
    errors: list = []

    class Targets:
        def register(self, name, port):
            pass

        def wait_in_service(self, name, timeout):
            group._stop.set()  # the drill ends while the replacement boots...
            raise AssertionError("balancer gone")  # ...and the balancer's workdir is gone (seen in a drill)

    class Member:
        http_port = 1

        def __init__(self, name):
            self.name = name

    logs: list = []
    group = Group(Member, Targets(), lambda m, t: False, rule=LivenessRule(failures=1, grace_s=0),
                  probe_interval_s=0.01, log=logs.append)
    group.launch()
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)
    try:
        group.start_health_checks()
        group._thread.join(timeout=10)
    finally:
        threading.excepthook = hook
    assert not group._thread.is_alive() and errors == [], errors
    assert not any("round failed" in line for line in logs), logs


def test_a_failed_round_is_logged_and_the_checks_go_on():
    logs: list = []
    rounds = []

    def flaky(member, timeout):
        rounds.append(time.monotonic())
        if len(rounds) == 1:
            raise OSError("ssh: connection reset")
        return True

    group = Group(lambda name: SimpleNamespace(name=name, http_port=1), SimpleNamespace(register=lambda n, p: None),
                  flaky, probe_interval_s=0.01, log=logs.append)
    group.launch()
    group.start_health_checks()
    deadline = time.monotonic() + 10
    while len(rounds) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    group.stop_health_checks()
    assert len(rounds) >= 3 and logs[0] == "group: a health check round failed: OSError: ssh: connection reset"
