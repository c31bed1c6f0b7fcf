"""The saturation drill's parts that run without a VM: the budget PostgreSQL gets, the classification of answers
(the balancer's 503 against a node's error against PostgreSQL's refusal, on a real HAProxy), the saturation search
(on a model and on a real loopback server with a fixed number of workers), the evidence parsers and the verdict."""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.drill import evidence
from infra.drill import saturation as sat
from infra.drill.balancer import TARGET_HEADER, Balancer, BalancerError, mark_target_answers, stack_target_group
from infra.drill.evidence import ConnectionSampler, instance_facts, oom_kills, too_many_clients_in_log
from infra.drill.load import Load, Outcome, Request
from infra.drill.run import run_drills
from infra.drill.saturation import (
    SaturationOptions,
    SaturationUsageError,
    Step,
    answer_kind,
    apply_max_connections,
    capacity_of,
    find_saturation,
    judge,
    request_plan,
    saturation_reason,
    twin_budget,
)
from render.haproxy import TargetGroupHealth, render_haproxy_cfg
from render.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/setup)")


def local(*sets: str):
    return load_settings(ROOT, "local", sets=sets, environ={}).settings


# ---- the budget handed to PostgreSQL -----------------------------------------------------------------------------
def test_the_budget_counts_the_guests_workers_cron_health_and_the_reserve():
    b = twin_budget(local(), 2)
    # 3072 MiB guest: reserve 1024, pool 2048 / 100 MiB = 20 workers (the t3.medium the settings name gives 30)
    assert (b.workers, b.per_instance, b.reserve) == (20, 22, 9)
    assert b.max_connections == 2 * 22 + 9 == 53
    assert b.fleet == 44
    assert twin_budget(local(), 3).max_connections == 3 * 22 + 9


@pytest.mark.parametrize(("sets", "workers"), [
    (["instance_type=t3.small"], 10),  # the rendered ceiling is lower than the guest's memory gives
    (["web.max_workers=6"], 6),
    (["web.worker_memory_mb=200"], 10),
])
def test_the_budget_never_counts_more_workers_than_the_instance_runs(sets, workers):
    b = twin_budget(local(*sets), 2)
    assert b.workers == workers
    assert b.max_connections == 2 * (workers + 2) + 9


def test_a_fleet_of_none_is_refused_by_flag():
    with pytest.raises(SaturationUsageError, match="--instances 0"):
        twin_budget(local(), 0)


class FakePg:
    def __init__(self):
        self.calls: list[str] = []
        self.max_connections = 100
        self.pending: int | None = None

    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        self.calls.append(sql)
        if sql.startswith("ALTER SYSTEM SET max_connections"):
            self.pending = int(sql.split("=")[1].strip(" ;"))
            return ""
        return f"{self.max_connections}\n"

    def stop(self):
        self.calls.append("stop")

    def start(self):
        self.calls.append("start")
        self.max_connections = self.pending or self.max_connections


def test_postgres_gets_the_budget_as_max_connections_and_a_restart():
    pg = FakePg()
    assert apply_max_connections(pg, 53) == 53
    assert pg.calls == ["ALTER SYSTEM SET max_connections = 53;", "stop", "start", "SHOW max_connections;"]


needs_postgres = pytest.mark.skipif(not Path("/usr/lib/postgresql/15/bin/initdb").exists(),
                                    reason="PostgreSQL 15 not installed")


@needs_postgres
def test_a_real_postgres_refuses_the_client_past_the_budget_and_logs_it():
    psycopg = pytest.importorskip("psycopg")
    from infra.localtwin.instance import free_port
    from infra.localtwin.services import ThrowawayPostgres

    with ThrowawayPostgres(free_port(), "pw-for-test") as pg:
        assert apply_max_connections(pg, 5) == 5
        # superuser_reserved_connections (3) leaves the application role 2
        held = [psycopg.connect(pg.dsn) for _ in range(2)]
        try:
            with pytest.raises(psycopg.OperationalError) as refused:
                psycopg.connect(pg.dsn)
            assert answer_kind(500, NODE, str(refused.value).encode()) == "too_many_clients"
            assert pg_connections_peak(pg) == (2, 2)
        finally:
            for conn in held:
                conn.close()
        time.sleep(0.2)
        assert too_many_clients_in_log(Path(pg.logfile).read_text()) >= 1


def pg_connections_peak(pg) -> tuple[int, int]:
    return evidence.pg_connections(pg)()


# ---- answers: the balancer's 503, a node's error, PostgreSQL's refusal ---------------------------------------------
NODE = {TARGET_HEADER.lower(): "slot1"}


@pytest.mark.parametrize(("status", "headers", "body", "kind"), [
    (200, NODE, b"{}", "ok"),
    (207, NODE, b"<d:multistatus/>", "ok"),
    (503, {}, b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available", "balancer_503"),
    (504, {}, b"<h1>504 Gateway Time-out</h1>", "balancer_504"),
    (503, NODE, b"maintenance", "node_503"),
    (500, NODE, b"", "node_500"),
    (401, NODE, b"", "node_401"),
    (500, NODE, b"SQLSTATE[08006] FATAL:  sorry, too many clients already", "too_many_clients"),
    (503, NODE, b"FATAL: remaining connection slots are reserved for non-replication superuser", "too_many_clients"),
])
def test_answers_are_told_apart_by_origin_and_by_postgres_refusal(status, headers, body, kind):
    assert answer_kind(status, headers, body) == kind


def test_the_marked_config_is_refused_without_its_backend():
    with pytest.raises(BalancerError, match="backend nextcloud"):
        mark_target_answers("frontend x\n")


@needs_haproxy
def test_haproxy_accepts_the_marked_config(tmp_path):
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(mark_target_answers(render_haproxy_cfg(stack_target_group(), port=18080,
                                                          socket_path=tmp_path / "s", slots=3)))
    check = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


class Node:
    """A loopback 'instance': /readyz 200; other paths answer ``status`` after ``delay`` with at most ``workers``
    at once (the rest wait, as in Apache's listen queue)."""

    def __init__(self, status: int = 200, delay: float = 0.0, workers: int = 64):
        self.status, self.delay = status, delay
        self.slots = threading.Semaphore(workers)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                if self.path != "/readyz":
                    with outer.slots:
                        time.sleep(outer.delay)
                        status = outer.status
                else:
                    status = 200
                body = b"answer"
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PROPFIND = _answer  # noqa: N815 - http.server's names

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.request_queue_size = 1024
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


FAST = TargetGroupHealth(path="/readyz", interval_s=1, timeout_s=1, healthy_threshold=1, unhealthy_threshold=1,
                         matcher="200", deregistration_delay_s=1, algorithm="least_outstanding_requests",
                         sticky=False, sticky_duration_s=86400)


@needs_haproxy
def test_through_a_real_haproxy_a_nodes_500_and_the_balancers_503_are_told_apart():
    node = Node(status=500)
    try:
        with Balancer(FAST, progress=lambda _: None) as lb:
            kinds = {o.kind for o in Load(lb.port, rate=20, duration_s=0.3, answer=answer_kind).run()}
            assert kinds == {"balancer_503"}, "no target registered: HAProxy answers itself"
            lb.register("n1", node.port)
            lb.wait_in_service("n1", 10)
            kinds = {o.kind for o in Load(lb.port, rate=20, duration_s=0.3, answer=answer_kind).run()}
            assert kinds == {"node_500"}
            node.status = 207
            load = Load(lb.port, rate=20, duration_s=0.3, answer=answer_kind,
                        requests=[Request("PROPFIND", "/remote.php/dav/files/admin/", {"Depth": "1"}, b"<x/>")])
            assert {o.kind for o in load.run()} == {"ok"}
    finally:
        node.close()


# ---- the saturation search -----------------------------------------------------------------------------------------
def model(capacity: float, base_ms: float = 20.0):
    """A fleet that serves up to ``capacity``/s; past it, what it cannot serve queues and latency climbs."""

    def measure(rate: float) -> Step:
        served = min(rate, capacity)
        p95 = base_ms if rate <= capacity else base_ms + 1000 * (rate - capacity) / capacity
        return Step(rate=rate, seconds=20, sent=int(rate * 20), offered_per_s=rate, served_per_s=served,
                    p50_ms=base_ms, p95_ms=p95, failed={})

    return measure


def test_the_ramp_stops_at_the_first_step_the_fleet_cannot_serve():
    steps, at = find_saturation(model(40), start_rate=5, max_rate=400)
    # x 1.5, two decimals: 11.25, 16.875 -> 16.88, 25.32, 37.98, 56.97
    assert [s.rate for s in steps] == [5, 7.5, 11.25, 16.88, 25.32, 37.98, 56.97]
    assert at is steps[-1] and at.saturated and "served 40" in at.why
    assert not any(s.saturated for s in steps[:-1])
    assert capacity_of(steps) == 40


def test_a_fleet_that_serves_everything_is_not_called_saturated():
    steps, at = find_saturation(model(1000), start_rate=5, max_rate=50)
    assert at is None and steps[-1].rate <= 50
    problems = judge(passing_facts(saturated_at=None))
    assert any("no saturation up to" in p and "--max-rate" in p for p in problems)


def step(**kw) -> Step:
    base = dict(rate=50, seconds=20, sent=1000, offered_per_s=50, served_per_s=50, p50_ms=20, p95_ms=30, failed={})
    return Step(**{**base, **kw})


@pytest.mark.parametrize(("kw", "why"), [
    ({"served_per_s": 44.0}, "served 44.0/s of 50/s"),
    ({"p95_ms": 400.0}, "p95 400.0 ms"),
    ({"failed": {"balancer_503": 20}}, "20 of 1000 failed"),
    ({"failed": {"client_saturated": 1}}, "in-flight limit"),
])
def test_each_sign_of_saturation_is_named(kw, why):
    assert why in saturation_reason(step(**kw), 30.0)
    assert saturation_reason(step(), 30.0) == ""


def test_one_request_short_of_the_share_is_not_saturation():
    # One instance of Nextcloud 34.0.1: 21 requests in 60.6 s (0.346/s), 0.307/s served: one answer short of 90 %;
    # the hold at twice the rate then served 0.62/s. Two answers short is saturation.
    at = dict(rate=0.33, seconds=60.6, sent=21, offered_per_s=0.346)
    assert saturation_reason(step(**at, served_per_s=0.307), None) == ""
    assert saturation_reason(step(**at, served_per_s=0.28), None)


def test_latency_alone_needs_three_times_the_first_step_and_250_ms():
    assert saturation_reason(step(p95_ms=200.0), 30.0) == "", "below the 250 ms floor"
    assert saturation_reason(step(p95_ms=260.0), 100.0) == "", "below 3 x the first step"
    assert saturation_reason(step(p95_ms=301.0), 100.0)


def test_a_step_counts_what_was_served_within_it_not_what_was_sent():
    # 10 s at 10/s: the first 5 s answered in 10 ms, the rest only after the step ended
    outcomes = [Outcome(i / 10, 0.01 if i < 50 else 20.0, "ok", 200) for i in range(100)]
    s = Step.of(10, outcomes, 0.0, 10.0)
    assert s.offered_per_s == 10.0
    assert s.served_per_s == 3.75  # 30 answered within [2 s warm-up, 10 s], over 8 s
    assert saturation_reason(s, 10.0)


def test_answers_slow_against_the_step_are_not_mistaken_for_saturation():
    # Real Nextcloud under TCG: 80 s at 0.1/s, every answer after 12 s. The fleet keeps up (a request every 10 s,
    # one at a time); the last request's answer simply arrives after the step. Counting from start + 2 s called
    # this saturated (7 answers in 78 s = 0.09/s < 90 % of 0.1/s); counting from start + one answer's time does not.
    outcomes = [Outcome(i * 10.0, 12.0, "ok", 200) for i in range(8)]
    s = Step.of(0.1, outcomes, 0.0, 80.0)
    assert s.offered_per_s == 0.1
    assert s.served_per_s >= 0.09, s
    assert saturation_reason(s, None) == ""
    # The same step where the answers took ever longer (a queue that grows) is still saturated.
    queued = [Outcome(i * 10.0, 12.0 + 15 * i, "ok", 200) for i in range(8)]
    assert saturation_reason(Step.of(0.1, queued, 0.0, 80.0), None)


@pytest.mark.parametrize("bad", [dict(max_rate=2000), dict(start_rate=50, max_rate=10), dict(hold_s=0)])
def test_bad_saturation_options_are_refused_by_flag(bad):
    with pytest.raises(SaturationUsageError, match="--max-rate|--rate|--hold"):
        SaturationOptions(**bad).check()


def test_bad_saturation_options_are_refused_before_anything_boots(tmp_path):
    from infra.drill.scenarios import Options

    with pytest.raises(SaturationUsageError, match="--max-rate"):
        run_drills(tmp_path, object(), scenarios=["saturation"], opts=Options(max_rate=5000))


# A real-time load ramp on loopback (steps of seconds; 15-30 s a test on 2 cores): in the full suite, not the quick one.
@pytest.mark.slow
def test_on_a_real_server_the_ramp_finds_what_its_workers_can_serve():
    """Two workers, 50 ms a request: 40/s at most. The ramp, on the real open-loop client, must saturate it
    between 40 and 60/s and measure a capacity near 40."""
    node = Node(delay=0.05, workers=2)
    try:
        def measure(rate: float) -> Step:
            load = Load(node.port, rate=rate, duration_s=2.5, max_in_flight=512, timeout_s=10, answer=answer_kind)
            start = load.now()
            return Step.of(rate, load.run(), start, start + 2.5)

        steps, at = find_saturation(measure, start_rate=10, max_rate=200, factor=1.5)
    finally:
        node.close()
    assert at is not None, [(s.rate, s.served_per_s) for s in steps]
    assert 33 <= at.rate <= 60, [(s.rate, s.served_per_s, s.why) for s in steps]
    assert 28 <= capacity_of(steps) <= 42, [(s.rate, s.served_per_s) for s in steps]


# ---- evidence --------------------------------------------------------------------------------------------------
KERNEL = """\
[  12.3] apache2 invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0
[  12.4] Memory cgroup out of memory: Killed process 4321 (apache2) total-vm:512000kB, anon-rss:300000kB
[  13.0] Out of memory: Killed process 77 (php) total-vm:1kB
[  14.0] oom_reaper: reaped process 77 (php), now anon-rss:0kB
"""


def test_every_oom_kill_in_the_kernel_log_is_counted_once():
    assert len(oom_kills(KERNEL)) == 2
    assert oom_kills("[ 1.0] Killed process by hand\n[ 2.0] usb 1-1: new device\n") == []


def test_the_instance_facts_read_kills_the_containers_flag_and_its_workers():
    out = KERNEL + "@@oomkilled@@\nfalse 0\n@@workers@@\nNEXTCLOUD_APACHE_MAX_WORKERS=18\nPHP_MEMORY_LIMIT=448M\n"
    f = instance_facts(out)
    assert (len(f["oom_kills"]), f["container_oom_killed"], f["container_restarts"], f["workers"], f["read"]) == \
        (2, False, 0, 18, True)
    assert instance_facts("@@oomkilled@@\ntrue 1\n@@workers@@\n")["container_oom_killed"] is True
    assert instance_facts("")["read"] is False, "an SSH failure is 'not read', never 'no kill'"


def test_postgres_refusals_are_counted_in_its_log():
    log = ("2026-12-05 21:00:00 UTC [1] LOG:  database system is ready\n"
           "2026-12-05 21:00:01 UTC [9] FATAL:  sorry, too many clients already\n"
           "2026-12-05 21:00:01 UTC [10] FATAL:  remaining connection slots are reserved for non-replication "
           "superuser connections\n")
    assert too_many_clients_in_log(log) == 2


def test_the_sampler_keeps_the_peaks_and_records_failed_samples():
    answers = iter([(3, 4), (40, 43), RuntimeError("psql failed: boom"), (12, 13)])

    def query():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    s = ConnectionSampler(query)
    for _ in range(4):
        s.sample()
    assert s.as_dict() == {"samples": 3, "peak_application_role": 40, "peak_all_clients": 43,
                           "sample_errors": ["psql failed: boom"]}


def test_the_sampler_samples_while_the_load_runs():
    calls = []
    with ConnectionSampler(lambda: calls.append(1) or (len(calls), len(calls)), interval_s=0.05):
        time.sleep(0.3)
    n = len(calls)
    time.sleep(0.15)
    assert n >= 4 and len(calls) == n, "sampled during the run and not after it"


def test_the_load_hits_real_pages_on_a_release_and_the_standin_otherwise():
    reqs, pages = request_plan(local(), "s3cret")
    assert [(r.method, r.path) for r in reqs] == [("GET", "/status.php"), ("PROPFIND", "/remote.php/dav/files/admin/")]
    assert reqs[1].headers["Authorization"] == "Basic YWRtaW46czNjcmV0"  # admin:s3cret
    assert "stand-in" in pages and "s3cret" not in pages


# ---- the verdict ---------------------------------------------------------------------------------------------------
def passing_facts(**over):
    facts = {
        "pages": "the stand-in", "max_rate": 400, "saturated_at": 56.7, "capacity_per_s": 40.0,
        "budget": {"instances": 2, "workers": 20, "per_instance": 22, "reserve": 9, "max_connections": 53,
                   "fleet": 44},
        "overload": {"rate": 60.0, "offered_per_s": 60.0, "served_per_s": 40.5, "p50_ms": 900.0, "p95_ms": 2100.0},
        "errors": {"balancer_503": 12},
        "too_many_clients": {"postgres_log": 0, "answers": 0},
        "connections": {"samples": 120, "peak_application_role": 42, "peak_all_clients": 42, "sample_errors": []},
        "instances": {"nc-drill-1": {"oom_kills": [], "container_oom_killed": False, "read": True, "workers": 18},
                      "nc-drill-2": {"oom_kills": [], "container_oom_killed": False, "read": True, "workers": 18}},
    }
    for key, value in over.items():
        facts[key] = value
    return facts


def test_a_fleet_that_queues_and_sheds_at_the_balancer_meets_the_target():
    assert judge(passing_facts()) == []
    f = sat.figures(passing_facts())
    assert (f["requests_per_s_per_instance"], f["connections_peak"], f["max_connections"]) == (20.25, 42, 53)


def _broken(mutate):
    facts = copy.deepcopy(passing_facts())
    mutate(facts)
    return judge(facts)


@pytest.mark.parametrize(("mutate", "problem"), [
    (lambda f: f["too_many_clients"].update(postgres_log=3), "too many clients"),
    (lambda f: f["too_many_clients"].update(answers=1), "too many clients"),
    (lambda f: f["instances"]["nc-drill-2"]["oom_kills"].append("Out of memory: Killed process 7"), "OOM kills"),
    (lambda f: f["instances"]["nc-drill-1"].update(container_oom_killed=True), "OOM kills"),
    (lambda f: f["instances"]["nc-drill-1"].update(read=False), "OOM kills unknown"),
    (lambda f: f["errors"].update(node_500=1), "answered by a node"),
    (lambda f: f["errors"].update(node_503=4), "answered by a node"),
    (lambda f: f["errors"].update(timeout=2), "neither queueing nor the balancer's 503"),
    (lambda f: f["errors"].update(balancer_502=2), "neither queueing nor the balancer's 503"),
    (lambda f: f["overload"].update(offered_per_s=39.0), "not more than the 40.0/s"),
    (lambda f: f["connections"].update(samples=0), "no sample"),
    (lambda f: f["connections"].update(peak_application_role=45), "more than the budget's 44"),
])
def test_each_broken_rule_fails_the_verdict_with_its_reason(mutate, problem):
    problems = _broken(mutate)
    assert any(problem in p for p in problems), problems


def test_a_request_that_queued_past_the_balancers_timeout_is_queueing_not_a_node_error():
    assert _broken(lambda f: f["errors"].update(balancer_504=7)) == []


def test_the_overload_queues_more_requests_than_the_fleet_has_workers_within_the_hold():
    # Real Nextcloud under TCG: capacity 0.1/s, 40 workers, 60 s: 1.5 x 0.1 = 0.15/s would queue 3 requests;
    # 0.1 + 40/60 = 0.767/s queues 40 (the excess 0.667/s x 60 s).
    assert sat.overload_rate(0.1, 0.15, 0.1, 40, 60) == 0.767
    # A fast fleet: 1.5 x 40 = 60/s is more than 40 + 40/60 = 40.67/s, so the overload factor decides.
    assert sat.overload_rate(40.0, 56.97, 5.0, 40, 60) == 60.0
    # Never more than the client may send.
    assert sat.overload_rate(900.0, 900.0, 5.0, 40, 60) == sat.RATE_CEILING


# ---- the stand-in's remote.php double: holds a database connection as a Nextcloud request does ---------------------
STANDIN = ROOT / "infra" / "localtwin" / "standin" / "nextcloud"
needs_php = pytest.mark.skipif(shutil.which("php") is None, reason="php-cli not installed")


def _php_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@needs_php
@needs_postgres
def test_the_standin_propfind_holds_a_connection_checks_the_password_and_fails_without_a_slot(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    import http.client

    from infra.localtwin.instance import free_port
    from infra.localtwin.services import ThrowawayPostgres

    web = tmp_path / "nextcloud"
    shutil.copytree(STANDIN, web)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".ncdata").write_text("# Nextcloud data directory\n# Do not change this file")
    with ThrowawayPostgres(free_port(), "db-pw") as pg:
        (web / "config" / "config.php").write_text(
            "<?php\n$CONFIG = ['installed' => true, 'version' => '99.0.0.0', "
            f"'dbhost' => '127.0.0.1:{pg.port}', 'dbname' => {_php_string(pg.dbname)}, "
            f"'dbuser' => {_php_string(pg.user)}, 'dbpassword' => 'db-pw', "
            f"'datadirectory' => {_php_string(str(tmp_path / 'data'))}];\n")
        hashed = subprocess.run(["php", "-r", "echo password_hash('admin-pw', PASSWORD_BCRYPT);"],
                                capture_output=True, text=True, check=True).stdout
        pg.psql("CREATE TABLE oc_users (uid varchar(64) PRIMARY KEY, displayname varchar(64), "
                f"password varchar(255) NOT NULL); INSERT INTO oc_users VALUES ('admin', 'admin', '{hashed}');"
                f"ALTER TABLE oc_users OWNER TO {pg.user};")
        port = free_port()
        server = subprocess.Popen(["php", "-S", f"127.0.0.1:{port}", "-t", str(web)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL,
                                  env={"PATH": "/usr/bin:/bin", "PHP_CLI_SERVER_WORKERS": "4"},
                                  start_new_session=True)  # its workers too are ended below, not left running
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "php -S did not start"
                    time.sleep(0.1)
            propfind = request_plan(local(), "admin-pw")[0][1]

            def send(req: Request) -> tuple[int, float]:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                t = time.monotonic()
                conn.request(req.method, req.path, body=req.body, headers=dict(req.headers))
                r = conn.getresponse()
                r.read()
                return r.status, time.monotonic() - t

            # PostgreSQL logs each of the role's statements with its duration: the hold is seen in the database
            pg.psql(f"ALTER ROLE {pg.user} SET log_min_duration_statement = 0;", dbname="postgres")
            status, took = send(propfind)
            assert status == 207
            assert took >= sat_hold_s(), "the connection is held for the typical request's time"
            time.sleep(0.2)
            slept = r"duration: ([0-9.]+) ms\s+(?:statement|execute [^:]*): SELECT pg_sleep\("
            held_ms = [float(m) for m in re.findall(slept, Path(pg.logfile).read_text())]
            assert len(held_ms) == 1 and held_ms[0] >= 1000 * sat_hold_s(), held_ms
            wrong = Request(propfind.method, propfind.path,
                            {**propfind.headers, "Authorization": "Basic YWRtaW46d3Jvbmc="}, propfind.body)
            assert send(wrong)[0] == 401
            assert send(Request("GET", propfind.path))[0] == 405
            # no slot left for the application role: the double fails as a node does, PostgreSQL logs why
            apply_max_connections(pg, 4)  # 3 reserved for superusers: 1 for the role
            held = psycopg.connect(pg.dsn)
            try:
                assert send(propfind)[0] == 500
            finally:
                held.close()
            time.sleep(0.2)
            assert too_many_clients_in_log(Path(pg.logfile).read_text()) >= 1
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)


def sat_hold_s() -> float:
    return float(re.search(r"const REQUEST_HOLD_SECONDS = ([0-9.]+);", (STANDIN / "remote.php").read_text()).group(1))


# ---- the whole scenario on loopback: real HAProxy, real PostgreSQL, 'instances' that queue like Apache ---------------
class LoopbackMember:
    def __init__(self, name: str, node: Node, kernel_log: str):
        self.name, self.node, self.http_port = name, node, node.port
        self.instance = self

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        assert command == evidence.INSTANCE_FACTS
        out = self.kernel_log + "@@oomkilled@@\nfalse 0\n@@workers@@\nNEXTCLOUD_APACHE_MAX_WORKERS=2\n"
        return subprocess.CompletedProcess([command], 0, out, "")


class LoopbackFleet:
    """What run_saturation uses of fleet.Fleet, with loopback servers for instances."""

    def __init__(self, pg, balancer: Balancer, nodes: list[Node], kernel_log: str = ""):
        self.settings, self.pg, self.balancer, self.nodes = local(), pg, balancer, nodes
        self.canaries = {"NEXTCLOUD_ADMIN_PASSWORD": "admin-pw"}
        self.origin, self.boot_timeout_s, self.lines = time.monotonic(), 30.0, []
        self.kernel_log = kernel_log
        self._members: dict[str, LoopbackMember] = {}

        class Group:
            events: list = []
            replaced: list = []

        self.group = Group()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def log(self, line: str) -> None:
        self.lines.append(line)

    def ensure(self, count: int) -> list[str]:
        for node in self.nodes[len(self._members):count]:
            name = f"nc-loop-{len(self._members) + 1}"
            member = LoopbackMember(name, node, self.kernel_log)
            member.kernel_log = self.kernel_log
            self.balancer.register(name, node.port)
            self.balancer.wait_in_service(name, 10)
            self._members[name] = member
        return list(self._members)

    def members(self) -> dict[str, LoopbackMember]:
        return dict(self._members)


def _run_on_loopback(status: int, kernel_log: str = ""):
    from infra.drill.scenarios import Options, saturation
    from infra.localtwin.instance import free_port
    from infra.localtwin.services import ThrowawayPostgres

    nodes = [Node(status=status, delay=0.05, workers=2) for _ in range(2)]  # 2 x 2 workers x 20/s: 80/s
    try:
        with ThrowawayPostgres(free_port(), "db-pw") as pg, Balancer(FAST, progress=lambda _: None) as lb:
            fleet = LoopbackFleet(pg, lb, nodes, kernel_log)
            opts = Options(start_rate=20, max_rate=300, hold_s=3, instances=2, step_s=2)
            result = saturation(fleet, opts)  # type: ignore[arg-type]
            took = int(pg.psql("SHOW max_connections;", dbname="postgres"))
    finally:
        for node in nodes:
            node.close()
    return result, took


# A real-time load ramp on loopback (steps of seconds; 15-30 s a test on 2 cores): in the full suite, not the quick one.
@pytest.mark.slow
@needs_haproxy
@needs_postgres
def test_the_scenario_end_to_end_on_loopback_meets_its_target_when_the_fleet_queues():
    result, took = _run_on_loopback(200)
    facts = result.details
    assert took == twin_budget(local(), 2).max_connections == facts["budget"]["max_connections_took"]
    assert facts["saturated_at"] is not None, facts["steps"]
    assert 50 <= facts["capacity_per_s"] <= 90, facts["steps"]
    assert facts["overload"]["offered_per_s"] > facts["capacity_per_s"]
    assert facts["connections"]["samples"] > 0
    # Before the ramp, each page twice per instance, one at a time, answered and not counted in the load.
    assert facts["warm_up"]["sent"] == facts["warm_up"]["ok"] == 2 * 2 * 2, facts["warm_up"]
    assert facts["load"]["sent"] == sum(s["sent"] for s in facts["steps"]) + facts["overload"]["sent"]
    assert facts["overload"]["saturated"], facts["overload"]
    assert result.passed, result.problems
    assert result.details["figures"]["requests_per_s_per_instance"] > 0


# A real-time load ramp on loopback (steps of seconds; 15-30 s a test on 2 cores): in the full suite, not the quick one.
@pytest.mark.slow
@needs_haproxy
@needs_postgres
def test_the_scenario_end_to_end_on_loopback_fails_a_fleet_whose_nodes_answer_500_or_oom():
    result, _ = _run_on_loopback(500, kernel_log="[ 9.1] Out of memory: Killed process 42 (apache2)\n")
    assert not result.passed
    assert any("answered by a node" in p and "node_500" in p for p in result.problems), result.problems
    assert any("OOM kills" in p for p in result.problems), result.problems


def test_a_ramp_from_the_lowest_rate_grows_and_each_step_holds_enough_requests():
    steps, at = find_saturation(model(1), start_rate=0.1, max_rate=2)
    rates = [s.rate for s in steps]
    assert rates[0] == 0.1 and len(rates) >= 6  # with one decimal, 0.1 x 1.5 could round back to 0.1 for ever
    assert all(abs(b - a * 1.5) <= 0.006 for a, b in zip(rates, rates[1:], strict=False)), rates
    assert at is steps[-1] and at.rate > 1 and not any(s.saturated for s in steps[:-1])
    from infra.drill import saturation as sat
    # At 0.1/s a 20 s step would be 2 requests; it lasts 20 requests instead (200 s): one answer at a window's edge
    # is then 5 % of the step, inside the 10 % the saturation rule allows.
    assert max(sat.STEP_S, sat.MIN_STEP_REQUESTS / 0.1) == 200
    assert 1 / sat.MIN_STEP_REQUESTS < (1 - sat.SERVED_SHARE) / 1.5
