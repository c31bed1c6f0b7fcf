"""The result document as a table (rich, for the terminal) and as Markdown (for docs/benchmarks.md)."""

from __future__ import annotations

from typing import Any

from infra.bench.stats import GB, compute_ratios, evaluate_targets, median_of, paired_verdict

_VERDICT_STYLE = {"met": "[green]met[/]", "missed": "[red]missed[/]", "undecided": "[yellow]undecided[/]"}


def _fmt_s(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f} s"


def _fmt_ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f} ms"


def _fmt_bytes(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v / GB:.2f} GB" if v >= 0.1 * GB else f"{v / 1e6:.0f} MB"


def paired_text(paired: dict[str, Any] | None) -> str:
    """The paired boot verdict in a few words: median, interval, pairs, what was left out."""
    if not paired:
        return "not measured"
    if paired["median"] is None:
        return paired["reason"]
    text = f"median {paired['median']:.2f}×"
    if paired["ci95"]:
        text += f", 95 % CI {paired['ci95'][0]:.2f}–{paired['ci95'][1]:.2f}×"
    text += f", n={paired['n']} pairs"
    left = paired.get("left_out") or {}
    if left.get("installing"):
        text += f" ({left['installing']} installing boot(s) left out)"
    return text


def render_table(doc: dict[str, Any]) -> Any:
    """A rich Table of the result document: medians, spread, samples, ratio to bare, target and verdict."""
    from rich.table import Table

    m = doc.get("measurements") or {}
    ratios = doc.get("ratios") or compute_ratios(m)
    targets = {t["name"]: t for t in doc.get("targets") or evaluate_targets(m)}
    paired = doc["paired"] if "paired" in doc else paired_verdict(m)
    machine = doc.get("machine") or {}
    table = Table(
        title=f"bench --env {doc.get('env', '?')} · {machine.get('cpu_model', '?')} × {machine.get('cores', '?')}"
        f" · {doc.get('generated_at', '?')}",
        caption="boots timed from QEMU start under TCG (software emulation); medians; spread = max − min; "
        "the boot verdict pairs each joining baked boot with the bare boot of its turn"
        + (
            f"\n[yellow]measured on different artifacts: {', '.join(f[:12] for f in doc['mixed_artifacts'])}[/]"
            if doc.get("mixed_artifacts")
            else ""
        ),
    )
    for col in ("measurement", "median", "min–max (spread)", "samples", "vs bare", "target", "met"):
        table.add_column(col, overflow="fold")

    def verdict(name: str) -> tuple[str, str]:
        t = targets.get(name)
        if not t:
            return "", ""
        word = t.get("verdict") or {True: "met", False: "missed", None: "not measured"}[t["met"]]
        shown = {**_VERDICT_STYLE, "met": "[green]yes[/]", "missed": "[red]no[/]"}.get(word, "—")
        return f"{t['op']} {t['target']}" + ("×" if name.endswith(("bare", "baked")) else ""), shown

    def timing_row(key: str, label: str, vs_bare: float | None, target: str) -> None:
        entry = m.get(key)
        if not entry:
            table.add_row(label, "not measured", "", "", "", *verdict(target) if target else ("", ""))
            return
        s = entry.get("stats") or {}
        if entry.get("error") and not s.get("n"):
            table.add_row(label, "[red]error[/]", entry["error"][:80], "", "", *verdict(target) if target else ("", ""))
            return
        spread = "—" if s.get("min") is None else f"{s['min']:.1f}–{s['max']:.1f} ({s['spread']:.1f})"
        clean = ((doc.get("uncontended") or {}).get(key) or {}).get("stats") or {}
        if clean and clean.get("n") != s.get("n"):
            spread += f"; no other VM: {_fmt_s(clean.get('median'))} (n={clean.get('n')})"
        samples = ", ".join(f"{x:.1f}" for x in entry.get("samples") or [])
        table.add_row(label, _fmt_s(s.get("median")), spread, samples,
                      "" if vs_bare is None else f"{vs_bare:.2f}×", *(verdict(target) if target else ("", "")))

    timing_row("boot_bare_s", "boot_bare_s (→ SSH)", 1.0 if median_of(m, "boot_bare_s") else None, "")
    timing_row("boot_baked_ready_s", "boot_baked_ready_s (→ /readyz 200)", ratios.get("baked_vs_bare"), "")
    if paired:
        if paired["ci95"]:
            spread = f"95 % CI {paired['ci95'][0]:.2f}–{paired['ci95'][1]:.2f}×, n={paired['n']} pairs"
        else:
            spread = paired["reason"] or ""
        table.add_row("  joining baked / bare, paired", "—" if paired["median"] is None else f"{paired['median']:.2f}×",
                      spread, ", ".join(f"{r:.2f}" for r in paired["ratios"]), "", f"≤ {paired['target']}×",
                      _VERDICT_STYLE.get(paired["verdict"], paired["verdict"]))
    timing_row("boot_seed_ready_s", "boot_seed_ready_s (→ /readyz 200)", ratios.get("seed_vs_bare"), "")
    if ratios.get("seed_vs_baked") is not None:
        table.add_row("  seed / baked", f"{ratios['seed_vs_baked']:.2f}×", "", "", "", *verdict("seed_vs_baked"))
    noop = m.get("noop_rebuild_s")
    timing_row("noop_rebuild_s", "noop_rebuild_s (inv build-ami)", None, "noop_rebuild")
    if noop and noop.get("proof"):
        p = noop["proof"]
        table.add_row(
            "  no VM started",
            "[green]proven[/]" if p.get("no_vm_started") else "[red]NOT proven[/]",
            f"reused={p.get('manifest_reused')}, qemu={p.get('qemu_seen')}, packer={p.get('packer_seen')}",
            "", "", "", "",
        )
    full = m.get("full_bake_s")
    if full:
        table.add_row("full_bake_s", _fmt_s(full.get("value")), full.get("source", ""), "", "", "", "")
    bake = m.get("bake_steps")
    if bake and bake.get("provisioners"):
        for step in bake["provisioners"]:
            if step["seconds"] >= 0.5:
                table.add_row(f"  bake: {step['name']}", _fmt_s(step["seconds"]), "", "", "", "", "")
        builder = (bake.get("by_kind") or {}).get("builder")
        if builder is not None:
            table.add_row("  bake: builder (boot, SSH wait, shutdown, copy)", _fmt_s(builder), "", "", "", "", "")
    elif bake and bake.get("error"):
        table.add_row("bake_steps", "[red]error[/]", bake["error"][:80], "", "", "", "")
    fp = m.get("footprint")
    if fp:
        if fp.get("error") and fp.get("image_used_bytes") is None:
            table.add_row("image_used_bytes", "[red]error[/]", fp["error"][:80], "", "", *verdict("footprint"))
        else:
            table.add_row("image_used_bytes (root fs)", _fmt_bytes(fp.get("image_used_bytes")),
                          f"of {_fmt_bytes(fp.get('fs_size_bytes'))} fs", "", "", "≤ 3 GB", verdict("footprint")[1])
            table.add_row("  artifact qcow2 file", _fmt_bytes(fp.get("artifact_file_bytes")), "", "", "", "", "")
            table.add_row("  nextcloud image (derived)", _fmt_bytes(fp.get("nextcloud_image_bytes")),
                          fp.get("nextcloud_image_note", ""), "", "", "", "")
    serving_rows(m.get("serving"), table.add_row)
    return table


def serving_text(sv: dict[str, Any] | None) -> tuple[str, str]:
    """The serving figures in two cells: requests/s per instance at saturation; latency, connections, errors."""
    if not sv:
        return "not measured", ""
    if sv.get("requests_per_s_per_instance") is None:
        return "error", str(sv.get("error", ""))[:80]
    errors = ", ".join(f"{k} {v}" for k, v in sorted((sv.get("errors") or {}).items())) or "none"
    return (f"{sv['requests_per_s_per_instance']:.1f} req/s per instance",
            f"p50 {_fmt_ms(sv.get('p50_ms'))}, p95 {_fmt_ms(sv.get('p95_ms'))}; "
            f"connections peak {sv['connections_peak']} of "
            f"{sv['connections_budget']} budgeted (max_connections {sv['max_connections']}); answers: {errors}; "
            f"OOM kills {sv['oom_kills']}")


def serving_rows(sv: dict[str, Any] | None, add_row: Any) -> None:
    if not sv:
        return
    value, detail = serving_text(sv)
    add_row("serving (saturation drill, 1 instance)", value, detail, "", "", "no 500, no refusal",
            "[green]yes[/]" if sv.get("passed") else "[red]no[/]")


def markdown_summary(doc: dict[str, Any]) -> str:
    """The headline numbers as a Markdown table (for docs/benchmarks.md), with the machine and the date."""
    m = doc.get("measurements") or {}
    ratios = doc.get("ratios") or compute_ratios(m)
    targets = {t["name"]: t for t in doc.get("targets") or evaluate_targets(m)}
    paired = doc["paired"] if "paired" in doc else paired_verdict(m)
    mach = doc.get("machine") or {}

    def timing(key: str) -> tuple[str, str]:
        e = m.get(key) or {}
        st = e.get("stats") or {}
        if not st.get("n"):
            return ("error: " + e["error"][:60]) if e.get("error") else "not measured", ""
        return f"{st['median']:.1f} s", f"{st['min']:.1f}–{st['max']:.1f} s, n={st['n']}"

    def met(name: str) -> str:
        t = targets.get(name) or {}
        word = t.get("verdict") or {True: "met", False: "missed"}.get(t.get("met"), "—")
        return "—" if word == "not measured" else word

    fp = m.get("footprint") or {}
    full = m.get("full_bake_s") or {}
    proof = (m.get("noop_rebuild_s") or {}).get("proof") or {}
    rows = [
        ("boot_bare_s (→ SSH)", *timing("boot_bare_s"), "floor", ""),
        ("boot_baked_ready_s (→ /readyz 200)", *timing("boot_baked_ready_s"),
         f"{ratios.get('baked_vs_bare') or '—'}× bare (medians)", ""),
        ("joining baked / bare, paired", paired_text(paired), "", "target ≤ 1.15×", met("baked_vs_bare")),
        ("boot_seed_ready_s (→ /readyz 200)", *timing("boot_seed_ready_s"),
         f"{ratios.get('seed_vs_baked') or '—'}× baked (target ≥ 5×)", met("seed_vs_baked")),
        ("noop_rebuild_s", *timing("noop_rebuild_s"),
         "no VM started: " + ("proven" if proof.get("no_vm_started") else "not shown"), met("noop_rebuild")),
        ("full_bake_s", _fmt_s(full.get("value")), full.get("source", ""), "", ""),
        ("image_used_bytes", _fmt_bytes(fp.get("image_used_bytes")),
         f"qcow2 file {_fmt_bytes(fp.get('artifact_file_bytes'))}", "target ≤ 3 GB", met("footprint")),
        ("Nextcloud image (derived)", _fmt_bytes(fp.get("nextcloud_image_bytes")), "", "", ""),
        ("serving (saturation, 1 instance)", *serving_text(m.get("serving")), "no 500, no refusal",
         {True: "met", False: "missed"}.get((m.get("serving") or {}).get("passed"), "—")),
    ]
    out = [
        f"Measured {doc.get('generated_at', '?')} on {mach.get('cores', '?')} cores of {mach.get('cpu_model', '?')}, "
        f"{mach.get('qemu') or 'QEMU ?'} (TCG), {mach.get('packer') or 'Packer ?'}.",
        "",
        "| measurement | median | spread | comparison | target |",
        "|---|---|---|---|---|",
        *[f"| {' | '.join(str(c) for c in r)} |" for r in rows],
    ]
    return "\n".join(out) + "\n"


def print_results(doc: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    if not console.is_terminal:  # a log file or a pipe: wide enough that step names do not wrap
        console = Console(highlight=False, width=160)
    console.print(render_table(doc))


def headline(doc: dict[str, Any]) -> str:
    """One line for the verdict: the boot target's verdict with its numbers, and what could not be measured."""
    paired = doc["paired"] if "paired" in doc else paired_verdict(doc.get("measurements") or {})
    if paired is None:
        line = "boot target not judged: no bare and baked boots in the results (inv bench --only bare --only baked)"
    else:
        line = f"boot target (joining baked / bare ≤ {paired['target']}×) {paired['verdict']}"
        if paired["median"] is not None:
            line += f": {paired_text(paired)}"
        if paired["verdict"] == "undecided" and paired["reason"]:
            line += f"; {paired['reason']}"
    failed = [key for key, entry in (doc.get("measurements") or {}).items()
              if isinstance(entry, dict) and entry.get("error")]
    if failed:
        line += f"; with errors: {', '.join(sorted(failed))} (see the table)"
    return line
