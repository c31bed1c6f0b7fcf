"""The liveness watchdog tells a busy node from a hung one (image/rootfs/.../liveness-watchdog).

Found with real Nextcloud 34 in the saturation drill: under overload /livez waits in Apache's listen queue behind
the users' requests, gets no answer in 20 s, and three such probes got a serving node replaced. These tests use
the real kernel: a socket that listens but never accepts (its accept queue fills as a saturated Apache's does) and
a process by the server's name that uses CPU (serving) or is stopped (hung).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG = ROOT / "image" / "rootfs" / "usr" / "local" / "libexec" / "nextcloud-image" / "liveness-watchdog"
COMM = "ncbusytest"  # the "server" processes' name; never apache2, which another process here might be


@pytest.fixture
def queue() -> Iterator[tuple[socket.socket, int]]:
    """A socket on loopback that listens and never accepts, with two connections waiting in its queue."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    port = server.getsockname()[1]
    waiting = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    yield server, port
    for s in waiting:
        s.close()
    server.close()


@pytest.fixture
def worker() -> Iterator[subprocess.Popen[bytes]]:
    """A process named COMM that burns CPU, as Apache's workers do while serving."""
    code = f"open('/proc/self/comm', 'w').write({COMM!r})\nwhile True:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", code])
    yield proc
    proc.kill()
    proc.wait()


def run(tmp_path: Path, port: int, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "RUNTIME_DIRECTORY": str(tmp_path), "NEXTCLOUD_LIVENESS_REPORT": "log",
           "NEXTCLOUD_LIVENESS_URL": f"http://127.0.0.1:{port}/livez", "NEXTCLOUD_LIVENESS_TIMEOUT": "1",
           "NEXTCLOUD_LIVENESS_SERVER_COMM": COMM, "NEXTCLOUD_LIVENESS_BUSY_WINDOW": "0.3", **extra}
    return subprocess.run([sys.executable, "-I", str(WATCHDOG), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_the_busy_check_reads_the_accept_queue_and_the_servers_cpu(tmp_path, queue, worker):
    _, port = queue
    doc = json.loads(run(tmp_path, port, "--busy-check").stdout)
    assert doc["backlog"] == 2 and doc["busy"] is True and doc["cpu_s"] > 0.1, doc


def test_a_busy_node_is_not_counted_and_a_hung_one_is(tmp_path, queue, worker):
    _, port = queue
    for n in (1, 2):  # more than the one failure that would report it here
        r = run(tmp_path, port, NEXTCLOUD_LIVENESS_FAILURES="1")
        assert f"the node is busy, not hung ({n}/20 busy probes" in r.stdout, r.stdout + r.stderr
        assert "failed" not in r.stdout and "would be reported" not in r.stdout
    worker.send_signal(signal.SIGSTOP)  # the workers block: the queue stays, the CPU stops
    try:
        out = run(tmp_path, port, NEXTCLOUD_LIVENESS_FAILURES="1").stdout
    finally:
        worker.send_signal(signal.SIGCONT)
    assert "liveness probe failed (1/1): no answer" in out and "not progressing" in out, out
    assert "would be reported Unhealthy" in out, out


def test_busy_for_longer_than_the_limit_counts_again(tmp_path, queue, worker):
    _, port = queue
    outs = [run(tmp_path, port, NEXTCLOUD_LIVENESS_BUSY_LIMIT="1").stdout for _ in range(2)]
    assert "(1/1 busy probes" in outs[0]
    assert "liveness probe failed (1/3)" in outs[1] and "more than NEXTCLOUD_LIVENESS_BUSY_LIMIT=1" in outs[1]


def test_an_empty_queue_is_not_busy_whatever_the_cpu(tmp_path, worker):
    with socket.socket() as server:  # listens, nobody waits: a probe without an answer here is a failure
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        doc = json.loads(run(tmp_path, port, "--busy-check").stdout)
    assert doc == {"busy": False, "backlog": 0, "cpu_s": None,
                   "detail": f"port {port}: no connection waits to be accepted"}


def test_nothing_listening_is_not_busy(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run(tmp_path, port)
    assert "liveness probe failed (1/3): no answer" in r.stdout and "nothing listens there" in r.stdout, r.stdout
