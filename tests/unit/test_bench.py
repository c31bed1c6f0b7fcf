"""The benchmark's numbers and record, without booting a VM: statistics, the paired boot verdict, the targets, the
alternating boots' bookkeeping, the result document, its table and the command line's --show."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from rich.console import Console

from infra.bench import BenchError, boots, record, run, stats, table
from infra.bench.rebuild import bake_breakdown

ROOT = Path(__file__).resolve().parents[2]


# ---- statistics ------------------------------------------------------------------------------------------------
def test_summarize_gives_median_and_spread_of_raw_samples():
    assert stats.summarize([80.0, 70.5, 75.0]) == {"n": 3, "median": 75.0, "min": 70.5, "max": 80.0, "spread": 9.5}
    assert stats.summarize([10, 20])["median"] == 15.0  # even count: mean of the middle two
    assert stats.summarize([]) == {"n": 0, "median": None, "min": None, "max": None, "spread": None}


@pytest.mark.parametrize(
    ("num", "den", "expected"),
    [(115.0, 100.0, 1.15), (None, 100.0, None), (5.0, None, None), (5.0, 0.0, None), (1.0, 3.0, 0.33)],
)
def test_ratio(num, den, expected):
    assert stats.ratio(num, den) == expected


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([1, 2, 3, 4], 0.5, 2.5),  # position 1.5: halfway between 2 and 3
    ([10, 20, 30, 40, 50], 0.025, 11.0),  # position 0.1: 10 + 0.1 x 10
    ([10, 20, 30, 40, 50], 0.975, 49.0),  # position 3.9: 40 + 0.9 x 10
    ([7.0], 0.975, 7.0),
])
def test_quantile_interpolates_between_closest_ranks(values, p, expected):
    assert stats.quantile(values, p) == pytest.approx(expected)
    if len(values) > 1:  # the same definition as the standard library's "inclusive" quantiles
        assert stats.quantile(values, 0.5) == pytest.approx(statistics.quantiles(values, n=2, method="inclusive")[0])


# ---- the paired boot verdict -----------------------------------------------------------------------------------
def _boots(bare: list[float | None], baked: list[float | None], *, installing: int = 1, series=("s1", "s1"),
           unknown: tuple[int, ...] = ()) -> dict:
    """Bare and baked entries as measure_alternating writes them: turn n of each (None: that boot failed); the
    baked boot of turn ``installing`` installed the cluster, those in ``unknown`` have no installed flag."""
    def details(values, kind):
        out = []
        for turn, v in enumerate(values, 1):
            if v is None:
                continue
            d = {"value_s": v, "turn": turn}
            if kind == "baked" and turn not in unknown:
                d["installed_cluster_on_this_boot"] = turn == installing
            out.append(d)
        return out

    def entry(values, kind, sid):
        got = [v for v in values if v is not None]
        return {"samples": got, "stats": stats.summarize(got), "details": details(values, kind), "series": sid}

    return {"boot_bare_s": entry(bare, "bare", series[0]), "boot_baked_ready_s": entry(baked, "baked", series[1])}


def test_each_joining_baked_boot_pairs_with_the_bare_boot_of_its_turn():
    # turn 1 installs; 2 and 3 pair (35.2 / 32 = 1.1, 44 / 40 = 1.1); turn 4's bare boot failed; turn 5 has no flag.
    m = _boots([30, 32, 40, None, 31], [45, 35.2, 44, 33, 34], unknown=(5,))
    found = stats.boot_pairs(m)
    assert found["pairs"] == [{"turn": 2, "bare_s": 32, "baked_s": 35.2, "ratio": 1.1},
                              {"turn": 3, "bare_s": 40, "baked_s": 44, "ratio": 1.1}]
    assert found["left_out"] == {"installing": 1, "role_unknown": 1, "no_bare_in_turn": 1}


# Three joining pairs: a resample's median is the smallest ratio with probability 7/27 (two or three of three draws),
# far above 2.5 %, so the 95 % interval is exactly [smallest, largest] ratio.
@pytest.mark.parametrize(("baked", "median", "ci95", "verdict"), [
    ([150, 105, 110, 112], 1.10, [1.05, 1.12], "met"),
    ([150, 120, 125, 130], 1.25, [1.20, 1.30], "missed"),
    ([150, 110, 114, 120], 1.14, [1.10, 1.20], "undecided"),
    ([150, 105, 115, 115], 1.15, [1.05, 1.15], "met"),  # the bound is inclusive
    ([150, 116, 120, 120], 1.20, [1.16, 1.20], "missed"),
])
def test_three_pairs_give_the_range_of_their_ratios_and_a_verdict_against_1_15(baked, median, ci95, verdict):
    paired = stats.paired_verdict(_boots([100, 100, 100, 100], baked))
    assert (paired["n"], paired["median"], paired["ci95"], paired["verdict"]) == (3, median, ci95, verdict)
    assert paired["left_out"]["installing"] == 1


def test_a_noisy_pair_cannot_flip_the_verdict():
    # Seven joining pairs, one from a minute the host was busy (1.40). A resample's median reaches the largest of
    # seven values only when 4+ of 7 draws are it: P = 1.0 %, under 2.5 %; the second largest or more: P = 10.8 %.
    # So the interval is [second smallest, second largest] = [1.03, 1.11]: met, the outlier ignored.
    baked = [160, 101, 103, 105, 107, 109, 111, 140]
    paired = stats.paired_verdict(_boots([100] * 8, baked))
    assert paired["ratios"] == [1.01, 1.03, 1.05, 1.07, 1.09, 1.11, 1.4]
    assert (paired["median"], paired["ci95"], paired["verdict"]) == (1.07, [1.03, 1.11], "met")


def test_a_slow_phase_of_the_host_moves_pooled_medians_but_not_the_pairs():
    # Turns 2-5 ran 1.3x slower, bare and baked alike (the host's other tenants). The ratio of the pooled medians
    # goes from 108 / 100 = 1.08 to 135.2 / 115 = 1.18, over the target; every pair's ratio stays what it was.
    baked = [160, 101, 103, 105, 107, 109, 111, 140]
    slow = [b * 1.3 if 2 <= turn <= 5 else b for turn, b in enumerate(baked, 1)]
    bare_slow = [130.0 if 2 <= turn <= 5 else 100.0 for turn in range(1, 9)]
    assert stats.compute_ratios(_boots([100] * 8, baked))["baked_vs_bare"] == 1.08
    assert stats.compute_ratios(_boots(bare_slow, slow))["baked_vs_bare"] == 1.18
    calm, noisy = stats.paired_verdict(_boots([100] * 8, baked)), stats.paired_verdict(_boots(bare_slow, slow))
    assert noisy["ratios"] == calm["ratios"] and (noisy["ci95"], noisy["verdict"]) == ([1.03, 1.11], "met")


@pytest.mark.parametrize(("n", "is_range"), [(2, True), (3, True), (4, True), (5, True), (6, False), (7, False)])
def test_up_to_five_pairs_the_interval_is_their_range(n, is_range):
    # P(a resample's median is the smallest of n): 4 pairs 4 x (1/4)^3 x 3/4 + (1/4)^4 = 5.1 %, 5 pairs 5.8 %, both
    # above 2.5 %; 6 pairs 0.9 % (4+ of 6 draws), so from 6 on the extremes fall outside the 95 % interval.
    ratios = [1.0 + i / 100 for i in range(n)]
    low, high = stats.bootstrap_median_interval(ratios)
    assert ((low, high) == (ratios[0], ratios[-1])) is is_range, (low, high)


def test_the_bootstrap_is_seeded_so_the_same_boots_give_the_same_interval():
    ratios = [1.02, 1.19, 1.08, 1.13, 1.31, 1.05, 1.16, 1.11, 1.24]
    first = stats.bootstrap_median_interval(ratios)
    assert first == stats.bootstrap_median_interval(ratios)
    low, high = first
    assert min(ratios) <= low <= statistics.median(ratios) <= high <= max(ratios)


def test_too_few_joining_pairs_are_undecided_and_say_how_to_get_more():
    paired = stats.paired_verdict(_boots([100, 100, 100], [150, 105, 106]))  # --runs 3: two joining pairs
    assert paired["n"] == 2 and paired["median"] == 1.055 and paired["ci95"] is None
    assert paired["verdict"] == "undecided" and "at least 3" in paired["reason"] and "--runs" in paired["reason"]


def test_boots_of_different_runs_never_pair():
    paired = stats.paired_verdict(_boots([100] * 4, [150, 105, 110, 112], series=("run-a", "run-b")))
    assert paired["n"] == 0 and paired["verdict"] == "undecided" and "not measured in one run" in paired["reason"]
    old = _boots([100] * 4, [150, 105, 110, 112], series=(None, None))  # results written before pairing existed
    assert stats.paired_verdict(old)["n"] == 0
    assert stats.paired_verdict({"boot_bare_s": _timing(70)}) is None


# ---- targets ----------------------------------------------------------------------------------------------------
def _timing(*samples: float) -> dict:
    return {"samples": list(samples), "stats": stats.summarize(samples)}


def test_targets_met_missed_and_undecided_are_told_apart():
    m = {
        **_boots([100, 100, 100, 100], [150, 120, 125, 130]),  # paired 1.20-1.30 > 1.15: missed
        "boot_seed_ready_s": _timing(600, 640, 700),  # 640 / 127.5 = 5.02 >= 5: met
        "noop_rebuild_s": _timing(1.2, 1.4, 1.3),
        "footprint": {"image_used_bytes": 3_200_000_000},  # 3.2 GB > 3 GB: missed
    }
    targets = {t["name"]: t for t in stats.evaluate_targets(m)}
    boot = targets["baked_vs_bare"]
    assert (boot["value"], boot["ci95"], boot["n_pairs"], boot["verdict"], boot["met"]) == (
        1.25, [1.2, 1.3], 3, "missed", False)
    assert targets["seed_vs_baked"]["value"] == 5.02 and targets["seed_vs_baked"]["met"] is True
    assert targets["noop_rebuild"]["value"] == 1.3 and targets["noop_rebuild"]["verdict"] == "met"
    assert targets["footprint"]["value"] == 3.2 and targets["footprint"]["met"] is False
    undecided = {t["name"]: t for t in stats.evaluate_targets(_boots([100] * 4, [150, 110, 114, 120]))}
    assert undecided["baked_vs_bare"]["verdict"] == "undecided" and undecided["baked_vs_bare"]["met"] is None


def test_targets_not_measured_are_neither_met_nor_missed():
    targets = stats.evaluate_targets({"boot_bare_s": _timing(70)})
    assert [t["met"] for t in targets] == [None, None, None, None]
    assert [t["verdict"] for t in targets] == ["not measured"] * 4
    assert all(t["value"] is None for t in targets)


def test_target_boundaries_are_inclusive():
    m = {**_boots([100] * 4, [150, 115, 115, 115]), "boot_seed_ready_s": _timing(575),
         "noop_rebuild_s": _timing(5.0), "footprint": {"image_used_bytes": 3 * 10**9}}
    assert all(t["met"] is True for t in stats.evaluate_targets(m))


def test_uncontended_view_keeps_only_boots_without_other_vms():
    def boot(v, start=(), end=()):
        return {"value_s": v, "other_qemu_at_start": list(start), "other_qemu_at_end": list(end)}

    m = {
        "boot_bare_s": {**_timing(146, 124, 92), "details": [boot(146, [1]), boot(124, (), [2]), boot(92)]},
        "boot_baked_ready_s": {**_timing(134, 135, 131), "details": [boot(134), boot(135), boot(131)]},
    }
    view = stats.uncontended_view(m)
    assert view["boot_bare_s"]["samples"] == [92]
    assert view["ratios"]["baked_vs_bare"] == 1.46
    assert "no other VM: 92.0 s (n=1)" in _render(record.merge_results(None, _doc(m)))


# ---- boots take turns ---------------------------------------------------------------------------------------------
def test_bare_and_baked_boots_take_turns_in_one_series(monkeypatch):
    # The boot itself is QEMU (integration suite); here only the order and the bookkeeping around it. A slow
    # phase of the machine must fall on both sides of the ratio, not on whichever kind happened to run then.
    order: list[tuple[str, int]] = []

    def boot(kind, target, user_data, until, *, run, runs, timeout_s, log, after=None, quiet_wait_s=0):
        order.append((kind, run))
        if (kind, run) == ("baked", 2):
            raise BenchError("readiness not reached")
        value = {"bare": 30.0, "baked": 33.0}[kind] + run
        return {"ssh_login_s": value, "ready_s": value} if until == "ssh" else {"ready_s": value}

    monkeypatch.setattr(boots, "boot_once", boot)

    def make(n):
        return ("disk", "ud", None)

    bare, baked = boots.measure_alternating([("bare", make, "ssh"), ("baked", make, "ready")], 3, 60, lambda _: None)
    assert order == [("bare", 1), ("baked", 1), ("bare", 2), ("baked", 2), ("bare", 3), ("baked", 3)]
    assert bare["samples"] == [31.0, 32.0, 33.0] and bare["stats"]["median"] == 32.0
    assert baked["samples"] == [34.0, 36.0] and baked["error"] == "run 2: readiness not reached"
    assert [d["turn"] for d in baked["details"]] == [1, 3]
    assert bare["alternated_with"] == ["baked"] and bare["until"] == "SSH key login"
    assert bare["series"] and bare["series"] == baked["series"], "the pairs of one run share a series id"
    again, _ = boots.measure_alternating([("bare", make, "ssh"), ("baked", make, "ready")], 1, 60, lambda _: None)
    assert again["series"] != bare["series"]


def test_select_measurements_accepts_names_keys_and_comma_lists_in_run_order():
    assert run.select_measurements(None) == list(run.MEASUREMENTS)
    chosen = run.select_measurements(["seed,footprint,bare", "boot_baked_ready_s"])
    assert chosen == ["bare", "baked", "footprint", "seed"]
    assert run.select_measurements("baked,bare") == ["bare", "baked"]


def test_select_measurements_refuses_a_typo_naming_the_choices():
    with pytest.raises(BenchError, match=r"--only 'bared': unknown measurement; choose from bare, baked, noop") as e:
        run.select_measurements(["bared"])
    assert e.value.exit_code == 2


# ---- the result document and its table ---------------------------------------------------------------------
def _doc(measurements: dict, fingerprint: str = "f" * 64) -> dict:
    return {"schema": record.SCHEMA, "env": "local", "generated_at": "2026-11-26T17:00:00Z",
            "machine": {"cores": 2, "cpu_model": "Test CPU"}, "artifact": {"fingerprint": fingerprint},
            "measurements": measurements}


def _render(doc: dict) -> str:
    console = Console(record=True, width=220)
    console.print(table.render_table(doc))
    return console.export_text()


def test_merge_keeps_earlier_measurements_of_the_same_artifact_and_recomputes_the_verdict():
    m = _boots([100] * 4, [150, 105, 110, 112])
    previous = record.merge_results(None, _doc({"boot_bare_s": m["boot_bare_s"]}))
    assert previous["paired"] is None
    merged = record.merge_results(previous, _doc({"boot_baked_ready_s": m["boot_baked_ready_s"]}))
    assert set(merged["measurements"]) == {"boot_bare_s", "boot_baked_ready_s"}
    assert merged["paired"]["verdict"] == "met" and merged["paired"]["ci95"] == [1.05, 1.12]
    assert next(t for t in merged["targets"] if t["name"] == "baked_vs_bare")["met"] is True
    json.dumps(merged)  # the document is plain JSON


def test_merge_labels_measurements_of_another_artifact():
    previous = record.merge_results(None, _doc({"boot_baked_ready_s": _timing(80)}, fingerprint="a" * 64))
    merged = record.merge_results(previous, _doc({"boot_bare_s": _timing(70)}))
    assert merged["measurements"]["boot_baked_ready_s"]["artifact_fingerprint"] == "a" * 64
    assert merged["measurements"]["boot_bare_s"]["artifact_fingerprint"] == "f" * 64
    assert merged["mixed_artifacts"] == ["a" * 64, "f" * 64]
    assert "measured on different artifacts" in _render(merged)
    same = record.merge_results(None, _doc({"boot_bare_s": _timing(70)}))
    assert same["mixed_artifacts"] is None and "different artifacts" not in _render(same)


PACKER_TIMINGS = {
    "packer_run_uuid": "run-1", "exit_code": 0, "total_seconds": 330.0,
    "steps": [{"name": "shell: install-docker.sh", "kind": "provisioner", "seconds": 120.0},
              {"name": "Gracefully halting virtual machine...", "kind": "builder", "seconds": 10.0}],
}


def test_table_shows_medians_spread_the_paired_verdict_and_the_other_targets():
    doc = record.merge_results(None, _doc({
        **_boots([70, 72, 74, 70], [110, 80, 79.2, 85.1]),  # pairs 80/72, 79.2/74, 85.1/70 = 1.11, 1.07, 1.22
        "boot_seed_ready_s": _timing(600, 640, 700),
        "noop_rebuild_s": {**_timing(1.2, 1.4, 1.3), "proof": {"no_vm_started": True, "manifest_reused": True,
                                                                "qemu_seen": False, "packer_seen": False}},
        "full_bake_s": {"value": 412.3, "source": "manifest of the bake at X"},
        "bake_steps": bake_breakdown(PACKER_TIMINGS),
        "footprint": {"image_used_bytes": 2_100_000_000, "fs_size_bytes": 6_400_000_000,
                      "artifact_file_bytes": 1_900_000_000, "nextcloud_image_bytes": 700_000_000},
    }))
    text = _render(doc)
    assert "71.0 s" in text and "70.0–74.0 (4.0)" in text and "70.0, 72.0, 74.0, 70.0" in text
    assert "1.11, 1.07, 1.22" in text
    assert "95 % CI 1.07–1.22×, n=3 pairs" in text
    assert "proven" in text and "412.3 s" in text and "install-docker.sh" in text
    assert "2.10 GB" in text and "0.70 GB" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") > 3}
    paired = rows["joining baked / bare, paired"].split("│")
    assert paired[2].strip() == "1.11×" and paired[7].strip() == "undecided"
    assert "yes" in rows["noop_rebuild_s (inv build-ami)"].split("│")[7]


def test_table_says_what_was_not_measured_or_failed():
    doc = record.merge_results(None, _doc({"boot_seed_ready_s": {"samples": [], "stats": stats.summarize([]),
                                                                 "error": "run 1: timed out after 2400s"}}))
    text = _render(doc)
    assert "not measured" in text and "error" in text and "timed out" in text


def test_markdown_summary_has_the_headline_numbers_and_the_verdict():
    doc = record.merge_results(None, _doc({
        **_boots([100] * 4, [150, 120, 125, 130]),
        "footprint": {"image_used_bytes": 1_370_000_000, "artifact_file_bytes": 1_690_000_000},
    }))
    md = table.markdown_summary(doc)
    row = ("| joining baked / bare, paired | median 1.25×, 95 % CI 1.20–1.30×, n=3 pairs (1 installing boot(s) left "
           "out) |  | target ≤ 1.15× | missed |")
    assert row in md, md
    assert "| boot_baked_ready_s (→ /readyz 200) | 127.5 s | 120.0–150.0 s, n=4 | 1.27× bare (medians) |" in md
    assert "| boot_seed_ready_s (→ /readyz 200) | not measured |" in md
    assert "1.37 GB" in md and "2 cores of Test CPU" in md


def test_the_verdict_line_names_the_boot_verdict_its_numbers_and_what_failed():
    doc = record.merge_results(None, _doc({**_boots([100] * 4, [150, 110, 114, 120]),
                                           "footprint": {"error": "footprint: dumpe2fs failed",
                                                         "image_used_bytes": None}}))
    line = table.headline(doc)
    assert line.startswith("boot target (joining baked / bare ≤ 1.15×) undecided: median 1.14×, 95 % CI 1.10–1.20×")
    assert "straddles 1.15x" in line and line.endswith("with errors: footprint (see the table)")
    assert table.headline(record.merge_results(None, _doc({}))).startswith("boot target not judged")


# ---- the command line ------------------------------------------------------------------------------------------
def _inv(capsys, *args) -> tuple[int, str, str]:
    from invoke import Program

    import tasks

    try:
        Program(namespace=tasks.ns, version="test").run(["inv", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_inv_bench_show_and_markdown_print_the_last_results_without_measuring(tmp_path, monkeypatch, capsys):
    import tasks.twin

    (tmp_path / record.RESULTS).parent.mkdir(parents=True)
    doc = record.merge_results(None, _doc(_boots([100] * 4, [150, 105, 110, 112])))
    (tmp_path / record.RESULTS).write_text(json.dumps(doc))
    monkeypatch.setattr(tasks.twin, "ROOT", tmp_path)
    monkeypatch.setattr(run, "run_bench", lambda *a, **k: pytest.fail("--show must not measure"))
    code, out, _ = _inv(capsys, "bench", "--show")
    assert code == 0 and "boot_bare_s" in out and "joining baked / bare, paired" in out, out
    code, out, _ = _inv(capsys, "bench", "--markdown")
    assert code == 0 and out.startswith("Measured 2026-11-26T17:00:00Z") and "| met |" in out, out


def test_inv_bench_show_without_results_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    import tasks.twin

    monkeypatch.setattr(tasks.twin, "ROOT", tmp_path)
    code, out, err = _inv(capsys, "bench", "--show")
    assert code == 2 and "verdict: refused - " in out and "not found: run the benchmark first (inv bench)" in out
    assert "Traceback" not in out + err


def test_inv_bench_passes_every_option_and_ends_with_the_boot_verdict(monkeypatch, capsys):
    seen = {}

    def fake_run(root, settings, **kwargs):
        seen.update(kwargs, env=settings.name)
        return record.merge_results(None, _doc(_boots([100] * 4, [150, 120, 125, 130])))

    monkeypatch.setattr(run, "run_bench", fake_run)
    code, out, _ = _inv(capsys, "bench", "--runs", "5", "--only", "bare", "--only", "baked", "--seed-runs", "2",
                        "--timeout", "30m", "--quiet-wait", "10m", "--port-wait", "90s", "--full-bake")
    assert code == 0, out
    assert seen == {"runs": 5, "only": ["bare", "baked"], "seed_runs": 2, "full_bake": True, "timeout_s": 1800.0,
                    "quiet_wait_s": 600.0, "port_wait_s": 90.0, "env": "local"}
    assert out.strip().splitlines()[-1].startswith(
        "verdict: measured - boot target (joining baked / bare ≤ 1.15×) missed: median 1.25×, 95 % CI 1.20–1.30×")


@pytest.mark.parametrize(("args", "named"), [(["--quiet-wait", "soon"], "--quiet-wait 'soon'"),
                                             (["--port-wait=-1"], "--port-wait '-1'"),
                                             (["--seed-runs", "0"], "--seed-runs '0'")])
def test_inv_bench_refuses_a_bad_wait_naming_the_flag(capsys, args, named):
    code, out, err = _inv(capsys, "bench", *args)
    assert code == 2 and out.strip().splitlines()[-1].startswith(f"verdict: refused - {named}: must be "), out
    assert "Traceback" not in out + err
