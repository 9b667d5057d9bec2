"""The report of ``python -m benchmarks``: Markdown tables, a JSON of every sample, a chart."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import sqlite3
import statistics
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.baseline import LIMITATIONS
from loader.runner import POLL_BROKER
from loader.salesdata import BAD_KINDS

if TYPE_CHECKING:
    from benchmarks.sales_bench import Bench, Sample

DIALECT_NAMES = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
COLORS = {"postgresql": "tab:blue", "sqlite": "tab:orange"}


def phases(bench: Bench) -> list[tuple[str, str]]:
    """Our phases, in table order, with their labels."""
    from benchmarks.sales_bench import FRACTIONS, WORKER_COUNTS

    rows = [("nightly_empty", "nightly, empty warehouse"),
            ("noop", "refresh, nothing changed"),
            ("noop_shell", "refresh, nothing changed, from the shell (`loader run` start "
                           "to exit)")]
    rows += [(f"edit_{f:g}", f"refresh after {f * 100:g}% of sales rows edited")
             for f in FRACTIONS]
    rows += [("shop", f"refresh after {bench.fx_changes} fx corrections + "
                      f"{bench.segment_changes:,} customer segment changes"),
             ("nightly_correct", "nightly, warehouse already correct")]
    for count in WORKER_COUNTS:
        plural = "s" if count > 1 else ""
        rows += [(f"workers{count}", f"nightly on {count} Redis worker{plural}: whole run"),
                 (f"workers{count}:extract",
                  f"nightly on {count} Redis worker{plural}: extract stage")]
    return rows


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "—"
    return f"{value:.2f}" if value >= 0.995 else f"{value:.3f}"


def _mib(kb: float | None) -> str:
    return "—" if kb is None else f"{kb / 1024:,.0f}"


def _spread(values: Sequence[float]) -> tuple[str, str, str]:
    return (_fmt(statistics.median(values)), _fmt(min(values)), _fmt(max(values)))


def _of(bench: Bench, dialect: str, phase: str) -> list[Sample]:
    return [s for s in bench.samples if s.dialect == dialect and s.phase == phase]


def timing_table(bench: Bench, dialect: str) -> list[str]:
    lines = ["| phase | runs | median s | min s | max s | ratio to baseline: median (min-max) "
             "| peak RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|"]
    for phase, label in phases(bench):
        key, _, part = phase.partition(":")
        found = _of(bench, dialect, key)
        if not found:
            continue
        value: Callable[[Sample], float] = (
            (lambda s: s.extract if s.extract is not None else float("nan"))
            if part else (lambda s: s.seconds))
        seconds = [value(s) for s in found]
        ratios = [value(s) / s.baseline for s in found if s.baseline]
        changed = [s.changed for s in found if s.changed]
        if changed and key.startswith("edit_"):
            label += f" (~{statistics.median(changed):,.0f} rows)"
        if part:
            rss = "—"
        elif key.startswith("workers"):
            rss = (f"client {_mib(max(s.rss_kb or 0 for s in found))}, worker "
                   f"{_mib(max(s.worker_rss_kb or 0 for s in found))}")
        else:
            rss = _mib(max(s.rss_kb or 0 for s in found))
        ratio = (f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                 if ratios else "—")
        lines.append(f"| {label} | {len(found)} | {' | '.join(_spread(seconds))} | {ratio} "
                     f"| {rss} |")
    base = _of(bench, dialect, "baseline")
    if base:
        loading = ("COPY" if dialect == "postgresql" else "csv.reader + executemany")
        lines.append(f"| **baseline: full rebuild** (truncate, reload, rebuild; every run) "
                     f"| {len(base)} | {' | '.join(_spread([s.seconds for s in base]))} | 1 "
                     f"| {_mib(max(s.rss_kb or 0 for s in base))} |")
        for step, label in (("load", f"· reload the region files ({loading})"),
                            ("prefilter", "·· of which the field-count pre-filter (Python)"),
                            ("shop", "· copy the shop tables"),
                            ("rebuild", "· rebuild the outputs (one SQL script)"),
                            ("commit", "· commit")):
            values = [s.steps[step] for s in base if step in s.steps]
            if values:
                lines.append(f"| {label} | {len(values)} | {' | '.join(_spread(values))} "
                             "| — | — |")
    return lines


def counts_table(bench: Bench) -> list[str]:
    lines = ["| dialect | run (repetition 1) | sales | daily_sales | customer_summary "
             "| loader rejects / baseline dropped | sum(amount_aud): loader, baseline |",
             "|---|---|---|---|---|---|---|"]
    labels = dict(phases(bench))
    for dialect in bench.args.dialects:
        rows = [s for s in bench.samples if s.dialect == dialect and s.rep == 0]
        base = None
        for sample in rows:
            if sample.phase == "baseline":
                base = sample
                continue
            if base is None:
                continue

            def pair(name: str, ours: Sample = sample, theirs: Sample = base) -> str:
                a, b = int(ours.counts[name]), int(theirs.counts[name])
                return f"{a:,} = {b:,}" if a == b else f"**{a:,} ≠ {b:,}**"

            lines.append(
                f"| {DIALECT_NAMES[dialect]} | {labels[sample.phase]} | {pair('sales')} "
                f"| {pair('daily_sales')} | {pair('customer_summary')} "
                f"| {sample.counts['rejects']} / {base.counts['dropped']} "
                f"| {revenue(sample, base)} |")
    return lines


def revenue(ours: Sample, base: Sample) -> str:
    from benchmarks.sales_bench import revenue_delta

    delta = revenue_delta(ours.counts, base.counts)
    if delta == 0:
        return f"{ours.counts['revenue_aud']} (equal)"
    mine, theirs = ours.counts["revenue_aud"], base.counts["revenue_aud"]
    if delta is None:
        return f"{mine}, {theirs}"
    if ours.dialect == "sqlite":
        return f"{float(mine):.2f}, {float(theirs):.2f} (floating point; Δ {float(delta):.2f})"
    return f"**{mine} ≠ {theirs}**"


def _median_task(found: Sequence[Sample], task: str, key: str) -> float:
    values = []
    for sample in found:
        for t in sample.tasks:
            if t["task"] == task and t.get(key) is not None:
                values.append(float(t[key]))
    return statistics.median(values) if values else float("nan")


def _wall(t: dict[str, Any]) -> float:
    start, end = t.get("started_at"), t.get("ended_at")
    if start is None or end is None:
        return float("nan")
    return (_dt(end) - _dt(start)).total_seconds()


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def profile_table(found: Sequence[Sample]) -> list[str]:
    """Per task: median processor seconds and task wall, share of the run, rows."""
    if not found or not found[0].tasks:
        return ["(no task history)"]
    last = found[-1]
    stage_of = {name: i + 1 for i, stage in enumerate(last.stages) for name in stage}
    run = statistics.median(s.seconds for s in found)
    for sample in found:
        for t in sample.tasks:
            t["wall"] = _wall(t)
    lines = ["| stage | task | processor s | task wall s | share of run | rows read | inserted "
             "| updated | deleted |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    in_stages = []
    for t in sorted(last.tasks, key=lambda t: (stage_of.get(t["task"], 99), _dt(t["started_at"]))):
        seconds = _median_task(found, t["task"], "seconds")
        wall = _median_task(found, t["task"], "wall")
        lines.append(f"| {stage_of.get(t['task'], '?')} | {t['task']} | {_fmt(seconds)} "
                     f"| {_fmt(wall)} | {wall / run:.0%} | {t['rows_read']:,} "
                     f"| {t['inserted']:,} | {t['updated']:,} | {t['deleted']:,} |")
    for sample in found:
        spans = []
        for stage in sample.stages:
            members = [t for t in sample.tasks if t["task"] in stage and t.get("ended_at")]
            if members:
                spans.append((max(_dt(t["ended_at"]) for t in members)
                              - min(_dt(t["started_at"]) for t in members)).total_seconds())
        in_stages.append(sum(spans))
    inside = statistics.median(in_stages)
    lines.append(f"| | **run (runner's seconds)** | | {_fmt(run)} | 100% | | | | |")
    lines.append(f"| | outside tasks (dispatch between stages, run start/end, the watcher) "
                 f"| | {_fmt(run - inside)} | {(run - inside) / run:.0%} | | | | |")
    return lines


def shell_note(bench: Bench, dialect: str) -> list[str]:
    """What a no-op refresh costs from the shell beyond the runner's own seconds."""
    found = [s for s in _of(bench, dialect, "noop_shell") if "runner" in s.steps]
    if not found:
        return []
    wall = statistics.median(s.seconds for s in found)
    runner = statistics.median(s.steps["runner"] for s in found)
    outside = statistics.median(s.seconds - s.steps["runner"] for s in found)
    return [f"From the shell, a no-op refresh took a median {_fmt(wall)} s from the start of "
            f"`loader run` to its exit, of which the runner's own {_fmt(runner)} s: "
            f"{_fmt(outside)} s went to starting the interpreter, importing, checking the "
            "migrations, loading the flow and exiting.", ""]


def workers_note(bench: Bench, dialect: str) -> list[str]:
    """How busy the machine was in the extract stage on 1 and 2 workers, and the most a
    second worker could gain on this many cores."""
    from benchmarks._cpu import speedup_bound

    one, two = _of(bench, dialect, "workers1"), _of(bench, dialect, "workers2")
    busy = [s.extract_cores for s in one if s.extract_cores is not None]
    if not one or not two or not busy:
        return []
    cores = os.cpu_count() or 1
    on_two = [s.extract_cores for s in two if s.extract_cores is not None]
    median_busy = statistics.median(busy)
    measured = (statistics.median(s.extract or float("nan") for s in one)
                / statistics.median(s.extract or float("nan") for s in two))
    return [f"Extract stage on {cores} cores: one worker kept a median of {median_busy:.2f} "
            f"cores busy ({min(busy):.2f}-{max(busy):.2f}; the loader and the database "
            "server together)"
            + (f", two workers {statistics.median(on_two):.2f}" if on_two else "")
            + f". With the same work spread over every core, two workers can be at most "
            f"{speedup_bound(median_busy, cores, 2):.2f}x faster here; measured "
            f"{measured:.2f}x (median stage on 1 worker ÷ median on 2).", ""]


def workers_table(found: Sequence[Sample]) -> list[str]:
    """Where each task of one distributed nightly ran, and when (the median run)."""
    if not found:
        return []
    sample = sorted(found, key=lambda s: s.seconds)[len(found) // 2]
    start = min(_dt(t["started_at"]) for t in sample.tasks)
    lines = ["| task | worker | starts at s | task wall s |", "|---|---|---:|---:|"]
    for t in sorted(sample.tasks, key=lambda t: _dt(t["started_at"])):
        lines.append(f"| {t['task']} | {str(t['worker']).split('@')[0]} "
                     f"| {(_dt(t['started_at']) - start).total_seconds():.2f} "
                     f"| {_fmt(_wall(t))} |")
    return lines


def machine() -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [f"- nproc: {nproc}", f"- memory: {memory}", f"- CPU: {model}",
            f"- OS: {platform.system()} {platform.release()} {platform.machine()}"]


def version_lines(extra: dict[str, str]) -> list[str]:
    names = {"sqlalchemy": "SQLAlchemy", "psycopg": "psycopg", "celery": "Celery",
             "kombu": "kombu", "redis": "redis-py"}
    lines = [f"- loader: {extra['code']}"] if "code" in extra else []
    lines.append(f"- Python {platform.python_version()}")
    lines += [f"- {label} {version(dist)}" for dist, label in names.items()]
    lines += [f"- {name} server {value}" for name, value in extra.items() if name != "code"]
    lines.append(f"- SQLite {sqlite3.sqlite_version} (the library Python's sqlite3 uses)")
    return lines


def chart(bench: Bench, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.sales_bench import FRACTIONS

    keys = ["noop", *(f"edit_{f:g}" for f in FRACTIONS)]
    labels = ["nothing", *(f"{f * 100:g}%" for f in FRACTIONS)]
    fig, ax = plt.subplots(figsize=(8, 5))
    for dialect in bench.args.dialects:
        color = COLORS[dialect]
        name = DIALECT_NAMES[dialect]
        xs, med, low, high = [], [], [], []
        for x, key in enumerate(keys):
            values = [s.seconds for s in _of(bench, dialect, key)]
            if values:
                m = statistics.median(values)
                xs.append(x)
                med.append(m)
                low.append(m - min(values))
                high.append(max(values) - m)
        if xs:
            ax.errorbar(xs, med, yerr=[low, high], color=color, marker="o", capsize=4,
                        label=f"{name}: sales.refresh (median, min-max)")
        base = [s.seconds for s in _of(bench, dialect, "baseline")]
        if base:
            ax.axhline(statistics.median(base), color=color, linestyle="--",
                       label=f"{name}: baseline full rebuild (median)")
        nightly = [s.seconds for s in _of(bench, dialect, "nightly_empty")]
        if nightly:
            ax.axhline(statistics.median(nightly), color=color, linestyle=":", alpha=0.6,
                       label=f"{name}: sales.nightly from empty (median)")
    ax.set_xticks(range(len(keys)), labels)
    ax.set_xlabel("sales rows edited before the refresh")
    ax.set_ylabel("seconds")
    ax.set_yscale("log")
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.set_title(f"Refresh time vs share of sales changed ({bench.scale.sales:,} rows)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(bench: Bench, command: str, versions: dict[str, str]) -> str:
    """Write the Markdown, JSON and PNG; returns the Markdown."""
    out: Path = bench.args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = bench.scale.sales
    stem = f"sales-{'-'.join(bench.args.dialects)}-{rows}"
    png = out / f"refresh-vs-changed-{'-'.join(bench.args.dialects)}-{rows}.png"
    chart(bench, png)
    scale = bench.scale
    lines = [f"# Sales workload: loader vs truncate-and-rebuild baseline, {rows:,} rows",
             "", f"Command: `{command}`", "",
             f"Run at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {bench.args.repeat} "
             f"repetition(s); chart: `{png.name}`.", "", "## Scale", "",
             f"- sales: {scale.sales:,} rows in {len(scale.regions)} region files "
             f"({', '.join(scale.regions)}), {len(BAD_KINDS)} bad rows per file "
             f"({', '.join(BAD_KINDS)}), quirks {'on' if scale.quirks else 'off'} (an extra "
             "quoted `channel` column in one file, CRLF in another, lower-case fx codes)",
             f"- shop: {scale.customers:,} customers, {scale.products:,} products, "
             f"{scale.days} days of rates for 9 foreign currencies (~1% of days missing)",
             f"- changes: `edit_sales` with fractions 0.1%, 1%, 10% (cumulative, one after "
             f"the other); then `correct_fx` of {bench.fx_changes} rates and "
             f"`change_segments` of {bench.segment_changes:,} customers",
             f"- generated in {bench.generate_seconds:.1f} s (seed {scale.seed})", "",
             "## Machine", "", *machine(), "", "## Versions", "", *version_lines(versions), ""]
    for dialect in bench.args.dialects:
        lines += [f"## {DIALECT_NAMES[dialect]}: seconds", "", *timing_table(bench, dialect), "",
                  *shell_note(bench, dialect), *workers_note(bench, dialect)]
    lines += ["Ratios are ours ÷ the baseline run on the same data just before it, pair by "
              "pair (the nightly runs, the no-op refresh and the worker runs pair with the "
              "baseline on the pristine data; the nightly over a correct warehouse with the "
              "one after the shop changes). Peak RSS: the process that ran the phase (a child "
              "process per phase; for worker runs the `loader run` client and the largest "
              "worker process).", ""]
    if bench.failures:
        lines += ["## Failed runs", ""]
        labels = dict(phases(bench))
        for failure in bench.failures:
            lines += [f"### {DIALECT_NAMES[failure['dialect']]}, repetition "
                      f"{failure['rep'] + 1}: {labels.get(failure['phase'], failure['phase'])}",
                      "", f"Error: `{failure['error']}`"
                      + (f" after {failure['seconds']:.1f} s" if failure.get("seconds") else ""),
                      ""]
            if failure["tasks"]:
                lines += ["| task | status | started | ended | processor s |",
                          "|---|---|---|---|---:|"]
                lines += [f"| {t['task']} | {t['status']} | {str(t['started_at'])[11:23]} "
                          f"| {str(t['ended_at'] or '')[11:23]} "
                          f"| {_fmt(float(t['seconds'])) if t['seconds'] is not None else ''} |"
                          for t in failure["tasks"]]
                lines.append("")
    lines += ["## Row counts: loader = baseline", "", *counts_table(bench), ""]
    if bench.mismatches:
        lines += ["**Mismatches:**", "", *(f"- {m}" for m in bench.mismatches), ""]
    else:
        lines += ["Every run of every repetition had the same `sales`, `daily_sales` and "
                  "`customer_summary` row counts as the baseline on the same data"
                  + (", and on PostgreSQL the same exact `sum(amount_aud)`." if
                     "postgresql" in bench.args.dialects else "."), ""]
    lines += ["## Per-task profile (from `loader_task_runs`, median of the repetitions)", ""]
    for dialect in bench.args.dialects:
        for phase, title in (("nightly_empty", "nightly, empty warehouse"),
                             ("edit_0.01", "refresh after 1% of sales rows edited")):
            lines += [f"### {DIALECT_NAMES[dialect]}: {title}", "",
                      *profile_table(_of(bench, dialect, phase)), ""]
        for count in (2, 1):
            found = _of(bench, dialect, f"workers{count}")
            if found:
                lines += [f"### {DIALECT_NAMES[dialect]}: nightly on {count} Redis worker"
                          f"{'s' if count > 1 else ''} (median run)", "",
                          *workers_table(found), ""]
    lines += ["## Method and caveats", "",
              "- Each repetition starts from a fresh copy of the generated directory and a "
              "fresh warehouse (a new PostgreSQL schema via `options=-csearch_path`, or a new "
              "SQLite file). In-process runs use the embedded worker (4 threads), as "
              "`loader run` without a broker does.",
              "- Our seconds are `RunReport.seconds` (from taking the lock to the watcher "
              "seeing the last task done; in-process it wakes as each task ends, with "
              f"workers it polls every {POLL_BROKER} s), which excludes interpreter "
              "start-up and migrations; the row from the shell times `loader run` whole, "
              "from its start to its exit. The baseline's seconds run "
              "from its first TRUNCATE to its COMMIT.",
              f"- Baseline (`benchmarks/baseline.py`): {LIMITATIONS} It builds `sales` with a "
              "primary key on `(region, txn_id)` and `customer_summary` on `customer_id` "
              "(the loader's tables have theirs), and rebuilds in one transaction.",
              "- The baseline's PostgreSQL pre-filter exists because `COPY` fails a whole file "
              "on one record with the wrong field count; it parses only lines with a quote or "
              "a wrong comma count.",
              "- On PostgreSQL a `CHECKPOINT` precedes every timed run.",
              *(f"- {note}" for note in bench.notes), ""]
    markdown = "\n".join(lines)
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.json").write_text(json.dumps(
        {"command": command, "scale": dataclasses.asdict(bench.scale),
         "versions": versions, "mismatches": bench.mismatches, "failures": bench.failures,
         "samples": [dataclasses.asdict(s) for s in bench.samples]}, default=str, indent=1))
    return markdown
