"""The benchmark's serving figures (issue 24): the saturation drill on one instance, recorded next to the boots."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from infra.bench import record, run, table
from infra.drill import saturation
from infra.errors import PipelineError

FIGURES = {
    "pages": ["GET /status.php", "PROPFIND /remote.php/dav/files/admin/"], "instances": 1,
    "workers_per_instance": 12, "workers_on_instances": {"nc-drill-1": 12}, "max_connections": 40,
    "capacity_per_s": 31.5, "requests_per_s_at_saturation": 30.2, "requests_per_s_per_instance": 30.2,
    "p50_ms": 412.0, "p95_ms": 1730.0, "errors": {"ok": 1800, "balancer_503": 42}, "connections_peak": 13,
    "connections_budget": 16, "connections_peak_all_clients": 15, "connections_refused": 0, "oom_kills": 0,
}


def _render(doc: dict) -> str:
    console = Console(record=True, width=260)
    console.print(table.render_table(doc))
    return console.export_text()


def test_serving_is_a_measurement_of_its_own_and_runs_last():
    assert run.MEASUREMENTS[-1] == "serving"
    assert run.select_measurements("serving,bare") == ["bare", "serving"]


def test_a_passing_drill_is_recorded_with_its_figures(monkeypatch):
    calls = []

    def fake(root, settings, *, instances, log):
        calls.append(instances)
        return {**FIGURES, "passed": True, "problems": []}

    monkeypatch.setattr(saturation, "serving_figures", fake)
    entry = run.measure_serving(Path("."), object(), log=lambda _: None)
    assert calls == [1]  # per instance: one instance behind the balancer
    assert entry["requests_per_s_per_instance"] == 30.2 and "error" not in entry and entry["measured_at"]


def test_a_failed_verdict_keeps_the_figures_and_says_why(monkeypatch):
    monkeypatch.setattr(saturation, "serving_figures", lambda *a, **k: {
        **FIGURES, "errors": {"ok": 10, "node_500": 3}, "passed": False,
        "problems": ["errors answered by a node, not the balancer: node_500 3"]})
    entry = run.measure_serving(Path("."), object(), log=lambda _: None)
    assert entry["error"] == "the saturation verdict failed: errors answered by a node, not the balancer: node_500 3"
    assert entry["requests_per_s_per_instance"] == 30.2


def test_a_drill_that_could_not_run_is_an_error_not_a_traceback(monkeypatch):
    def boom(*a, **k):
        raise PipelineError("fleet: port 55432 already in use")

    monkeypatch.setattr(saturation, "serving_figures", boom)
    entry = run.measure_serving(Path("."), object(), log=lambda _: None)
    assert entry["error"] == "serving: fleet: port 55432 already in use"


def test_the_table_and_the_markdown_show_requests_per_instance_latency_and_connections():
    doc = record.merge_results(None, {
        "schema": record.SCHEMA, "env": "local", "generated_at": "2026-12-05T23:00:00Z",
        "machine": {"cores": 2, "cpu_model": "Test CPU"}, "artifact": {"fingerprint": "f" * 64},
        "measurements": {"serving": {**FIGURES, "passed": True, "problems": []}}})
    text = _render(doc)
    row = next(line for line in text.splitlines() if "serving (saturation drill" in line)
    assert "30.2 req/s per instance" in row and "p50 412 ms, p95 1730 ms" in row
    assert "connections peak 13 of 16 budgeted (max_connections 40)" in row and "yes" in row
    md = table.markdown_summary(doc)
    assert "| serving (saturation, 1 instance) | 30.2 req/s per instance |" in md and "| met |" in md
    assert "answers: balancer_503 42, ok 1800" in md
