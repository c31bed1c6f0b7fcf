"""The drills' parts that run without a VM: HAProxy's config from the stack, the loopback-only fixed-rate load, its
accounting, the balancer's register/deregister on a real HAProxy, and the group stand-in's replacement rule."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.drill.asg import Group, LivenessRule
from infra.drill.balancer import Balancer, stack_target_group
from infra.drill.load import Load, LoadError, LoadSummary, Outcome, loopback_port, percentile
from infra.stack.template import load_template
from render.haproxy import TargetGroupError, TargetGroupHealth, render_haproxy_cfg

needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/setup)")


# ---- HAProxy's config follows the stack's target group -------------------------------------------------------
def _tg_props() -> dict:
    return load_template()["Resources"]["TargetGroup"]["Properties"]


def _cfg(tg: TargetGroupHealth) -> str:
    return render_haproxy_cfg(tg, port=18080, socket_path=Path("/tmp/x.sock"), slots=3)


def test_the_balancer_checks_health_exactly_as_the_target_group_does():
    props = _tg_props()
    cfg = _cfg(stack_target_group())
    assert f"option httpchk GET {props['HealthCheckPath']}\n" in cfg
    assert f"http-check expect status {props['Matcher']['HttpCode']}\n" in cfg
    assert f"timeout check {props['HealthCheckTimeoutSeconds']}s\n" in cfg
    server = re.search(r"^\s*default-server (.*)$", cfg, re.M).group(1).split()
    assert server[server.index("inter") + 1] == f"{props['HealthCheckIntervalSeconds']}s"
    assert server[server.index("fall") + 1] == str(props["UnhealthyThresholdCount"])
    assert server[server.index("rise") + 1] == str(props["HealthyThresholdCount"])
    assert "balance leastconn" in cfg  # least_outstanding_requests
    assert re.search(r"^\s*retries 0$", cfg, re.M), "the ALB does not retry a request on another target"
    attrs = {a["Key"]: a["Value"] for a in props["TargetGroupAttributes"]}
    assert stack_target_group().deregistration_delay_s == int(attrs["deregistration_delay.timeout_seconds"])


def test_a_changed_target_group_changes_the_config():
    props = {**_tg_props(), "HealthCheckIntervalSeconds": 30, "UnhealthyThresholdCount": 5,
             "HealthCheckPath": "/livez"}
    cfg = _cfg(TargetGroupHealth.from_properties(props))
    assert "inter 30s" in cfg and "fall 5" in cfg and "GET /livez" in cfg


def test_a_target_group_without_a_health_setting_is_refused_by_name():
    props = dict(_tg_props())
    del props["HealthyThresholdCount"]
    with pytest.raises(TargetGroupError, match="HealthyThresholdCount"):
        TargetGroupHealth.from_properties(props)


@needs_haproxy
def test_haproxy_accepts_the_rendered_config(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(render_haproxy_cfg(stack_target_group(), port=18080, socket_path=tmp_path / "s", slots=3))
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# ---- the load: loopback only, fixed rate, hard stop, every failure counted by kind --------------------------
@pytest.mark.parametrize("target", ["10.0.2.2:80", "172.17.0.1:80", "example.com:80", "localhost:80",
                                    "127.0.0.1", "http://127.0.0.1:80", "127.0.0.1:80@10.0.0.1", "[::1]:80",
                                    "127.0.0.1:0", "127.0.0.1:70000"])
def test_the_load_refuses_anything_but_loopback(target):
    with pytest.raises(LoadError, match="127.0.0.1:PORT|port must be"):
        loopback_port(target)
    with pytest.raises(LoadError):
        Load(target)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["//evil.example/x", "http://evil.example/", "evil.example/", "/a b", "/\r\nHost: x"])
def test_the_load_refuses_a_path_that_could_name_another_host(path):
    with pytest.raises(LoadError, match="plain path"):
        Load(18080, path=path)


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_the_summary_counts_failures_by_kind_and_times_only_successes():
    outcomes = [Outcome(0, 0.010, "ok", 200), Outcome(0.2, 0.020, "ok", 200), Outcome(0.4, 0.5, "http_503", 503),
                Outcome(0.6, 30.0, "timeout"), Outcome(0.8, None, "client_saturated"), Outcome(1.0, 0.030, "ok")]
    s = LoadSummary.of(outcomes)
    assert (s.sent, s.ok, s.failed_total) == (6, 3, 3)
    assert s.failed == {"client_saturated": 1, "http_503": 1, "timeout": 1}
    assert (s.p50_ms, s.p99_ms) == (20.0, 30.0)


class _Server:
    """A loopback HTTP server whose answer the test sets: status, or a delay for requests other than /readyz (to hold
    a request in flight)."""

    def __init__(self, status: int = 200, delay: float = 0.0):
        self.status, self.delay, self.hits = status, delay, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path != "/readyz":  # health checks are answered at once
                    outer.hits += 1
                    time.sleep(outer.delay)
                body = b'{"ready": true}' if outer.status == 200 else b'{"ready": false}'
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_the_load_sends_at_its_fixed_rate_and_stops_on_time(server):
    t = time.monotonic()
    outcomes = Load(server.port, rate=20, duration_s=1.5).run()
    assert 1.4 < time.monotonic() - t < 3, "spread over the duration, not sent in a burst, and stopped on time"
    assert len(outcomes) == 30 and all(o.ok for o in outcomes)
    gaps = [b.t - a.t for a, b in zip(outcomes, outcomes[1:], strict=False)]
    assert all(abs(g - 0.05) < 0.02 for g in gaps), gaps


def test_the_load_counts_http_errors_and_refused_connections(server):
    server.status = 503
    assert {o.kind for o in Load(server.port, rate=10, duration_s=0.5).run()} == {"http_503"}
    port = server.port
    server.close()
    assert {o.kind for o in Load(port, rate=10, duration_s=0.5).run()} == {"refused"}


def test_a_hung_server_cannot_keep_the_load_running(server):
    server.delay = 5
    t = time.monotonic()
    outcomes = Load(server.port, rate=10, duration_s=0.5, timeout_s=0.5, max_in_flight=3).run()
    assert time.monotonic() - t < 3
    kinds = LoadSummary.of(outcomes).failed
    assert kinds.get("timeout") == 3 and kinds.get("client_saturated") == 2, kinds


# ---- the balancer: a real HAProxy, health checks sped up -----------------------------------------------------
FAST = TargetGroupHealth(path="/readyz", interval_s=1, timeout_s=1, healthy_threshold=2, unhealthy_threshold=2,
                         matcher="200", deregistration_delay_s=5, algorithm="least_outstanding_requests",
                         sticky=True, sticky_duration_s=86400)


@needs_haproxy
def test_a_target_gets_traffic_only_after_its_checks_pass_and_leaves_it_when_readiness_fails(server):
    with Balancer(FAST, progress=lambda _: None) as lb:
        server.status = 503
        lb.register("a", server.port)
        assert not lb.targets()["a"].in_service, "a new target starts unhealthy, as in a target group"
        time.sleep(3)
        assert not lb.targets()["a"].in_service, "a target that never passed readiness must get no traffic"
        server.status = 200
        assert lb.wait_in_service("a", timeout=10) >= 1.0  # two checks one second apart
        assert {o.kind for o in Load(lb.port, rate=10, duration_s=0.5).run()} == {"ok"}
        server.status = 503
        deadline = time.monotonic() + 10
        while lb.targets()["a"].in_service and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not lb.targets()["a"].in_service
        assert {o.kind for o in Load(lb.port, rate=10, duration_s=0.5).run()} == {"http_503"}


@needs_haproxy
def test_deregistering_lets_the_request_in_flight_finish_and_sends_no_new_one():
    slow, other = _Server(delay=2), _Server()
    try:
        with Balancer(FAST, progress=lambda _: None) as lb:
            lb.register("slow", slow.port)
            lb.wait_in_service("slow", timeout=10)
            load = Load(lb.port, rate=1, duration_s=1).start()  # one request, held 2 s by the slow target
            time.sleep(0.5)
            assert lb.targets()["slow"].sessions == 1
            lb.register("other", other.port)
            lb.wait_in_service("other", timeout=10)
            lb.deregister("slow")
            hits = slow.hits
            waited = lb.wait_drained("slow", delay_s=5)
            assert waited < 4, "the drain ends when the last request ends, before the delay"
            outcomes = load.join()
            assert [o.kind for o in outcomes] == ["ok"], "the request in flight finished"
            assert {o.kind for o in Load(lb.port, rate=10, duration_s=0.5).run()} == {"ok"}
            assert slow.hits == hits, "a deregistered target got a new request"
    finally:
        slow.close()
        other.close()


# ---- the group stand-in: replace on liveness, launch before terminate ---------------------------------------
def test_the_rule_needs_three_failures_in_a_row_and_respects_the_grace_period():
    rule = LivenessRule(failures=3, grace_s=100)
    assert [rule.observe("a", False, 200) for _ in range(2)] == [False, False]
    assert rule.observe("a", True, 200) is False, "a success resets the count"
    assert [rule.observe("a", False, 200) for _ in range(3)] == [False, False, True]
    young = LivenessRule(failures=3, grace_s=100)
    assert [young.observe("b", False, 50) for _ in range(5)] == [False] * 5, "within the grace period"
    assert young.observe("b", False, 150) is True


class FakeMember:
    """Stands in for a twin instance: a name, a port, a shutdown the test can watch."""

    def __init__(self, name, calls):
        self.name, self.http_port, self.calls = name, 1000 + len(calls), calls

    def shutdown(self):
        self.calls.append(("shutdown", self.name))
        return 0.0


class FakeTargets:
    """Stands in for the balancer: records what the group asks of it, in order."""

    def __init__(self, calls):
        self.calls = calls

    def register(self, name, port):
        self.calls.append(("register", name))

    def deregister(self, name):
        self.calls.append(("deregister", name))

    def wait_drained(self, name, delay_s):
        self.calls.append(("drained", name))
        return 0.0

    def wait_in_service(self, name, timeout):
        self.calls.append(("in_service", name))
        return 0.0

    def release(self, name):
        self.calls.append(("release", name))


def _group(live):
    calls: list = []
    group = Group(lambda name: FakeMember(name, calls), FakeTargets(calls), lambda m, timeout: live[m.name],
                  rule=LivenessRule(failures=3, grace_s=0), log=lambda _: None)
    return group, calls


def test_the_group_replaces_a_dead_instance_launch_first_and_leaves_a_live_one_alone():
    live = {"nc-drill-1": True, "nc-drill-2": True, "nc-drill-3": True}
    group, calls = _group(live)
    group.launch(), group.launch()
    live["nc-drill-1"] = False
    calls.clear()
    assert group.check_health_once() == [] and group.check_health_once() == []
    assert calls == []
    assert group.check_health_once() == ["nc-drill-1"]
    assert calls == [("register", "nc-drill-3"), ("in_service", "nc-drill-3"), ("deregister", "nc-drill-1"),
                     ("drained", "nc-drill-1"), ("shutdown", "nc-drill-1"), ("release", "nc-drill-1")]
    assert sorted(group.members) == ["nc-drill-2", "nc-drill-3"]
    assert [r["instance"] for r in group.replaced] == ["nc-drill-1"]


def test_scale_in_drains_before_the_instance_is_shut_down():
    group, calls = _group({"nc-drill-1": True})
    group.launch()
    calls.clear()
    group.terminate("nc-drill-1")
    assert calls == [("deregister", "nc-drill-1"), ("drained", "nc-drill-1"), ("shutdown", "nc-drill-1"),
                     ("release", "nc-drill-1")]
