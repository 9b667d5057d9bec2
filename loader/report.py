"""``loader report``: one run as a self-contained HTML page.

The page has the run's header (flow, mode, status, duration, error), a
timeline of its tasks (an inline SVG: one bar per task from its start to its
end, in lanes by worker, over a time axis), the cells it changed per table
and column (a table with horizontal bars) and every task's counts. It needs
no network and no JavaScript: the CSS is inline, hover titles are SVG
``<title>`` elements, and every piece of text goes through ``html.escape``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from loader import commands

WIDTH = 1100
LABEL = 230
RIGHT = 78
AXIS = 34
LANE_HEAD = 24
ROW = 26
BAR = 15
MAX_LABEL = 32
COLORS = {"succeeded": "#3b7dd8", "failed": "#d64545", "running": "#9aa3ad"}
STATUS_CLASS = {"succeeded": "ok", "failed": "bad", "running": "busy"}
COUNTS = ("rows_read", "inserted", "updated", "deleted", "rejected")

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 40px; background: #f6f7f9; color: #1f2430;
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 22px; margin: 0 0 10px; }
h1 .id { color: #6b7280; font-weight: 500; }
h2 { font-size: 16px; margin: 0 0 12px; }
section, header { background: #fff; border: 1px solid #e3e6ea; border-radius: 8px;
                  padding: 18px 20px; margin: 0 auto 18px; max-width: 1160px; }
.facts { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0; }
.facts div { display: flex; gap: 8px; }
.facts dt { color: #6b7280; }
.facts dd { margin: 0; font-weight: 600; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px;
         line-height: 20px; font-weight: 600; color: #fff; background: #9aa3ad; }
.badge.ok { background: #2f9e5b; } .badge.bad { background: #d64545; }
.badge.busy { background: #d08a1c; }
.error { margin: 12px 0 0; padding: 10px 12px; border-left: 4px solid #d64545;
         background: #fdf0f0; color: #8a1f1f; white-space: pre-wrap; word-break: break-word;
         font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.params { margin-top: 8px; color: #4b5563; font-size: 13px; word-break: break-all; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 12.5px; }
svg { display: block; width: 100%; height: auto; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.legend { display: flex; gap: 18px; font-size: 12px; color: #4b5563; margin-top: 6px; }
.legend span::before { content: ""; display: inline-block; width: 10px; height: 10px;
                       border-radius: 2px; margin-right: 6px; background: var(--c); }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 5px 10px; text-align: left; border-bottom: 1px solid #eef0f3;
         vertical-align: baseline; }
th { font-size: 12px; color: #6b7280; font-weight: 600; border-bottom: 1px solid #d9dde3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.table-head td { background: #f8f9fb; font-weight: 600; border-top: 1px solid #d9dde3; }
.bar { height: 12px; min-width: 2px; background: #3b7dd8; border-radius: 2px; }
.bar.total { background: #9db8e6; }
table.changes { table-layout: fixed; }
table.changes col.t { width: 17%; } table.changes col.c { width: 19%; }
table.changes col.n { width: 10%; } table.changes col.b { width: 30%; }
table.changes td { overflow-wrap: anywhere; }
.nowrap { white-space: nowrap; }
.muted { color: #6b7280; }
.small { font-size: 12px; }
td.err { color: #8a1f1f; word-break: break-word; }
footer { max-width: 1160px; margin: 0 auto; color: #9aa3ad; font-size: 12px; }
"""


# ------------------------------------------------------------------------ helpers


def _time(value: Any) -> datetime | None:
    """A datetime from the history (a datetime, or ISO text on some drivers)."""
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else escape(str(value or 0))


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f}s"
    if value < 600:
        return f"{value:.1f}s"
    minutes, secs = divmod(value, 60)
    return f"{int(minutes)}m {secs:02.0f}s"


def _json_field(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _nice_step(span: float, ticks: int = 8) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``ticks`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _tick_label(value: float, step: float) -> str:
    if step >= 60 and value >= 60:
        minutes, secs = divmod(value, 60)
        return f"{int(minutes)}m" + (f"{secs:02.0f}s" if secs else "")
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{decimals}f}s"


def changes_by_column(tasks: Iterable[Mapping[str, Any]]
                      ) -> dict[str, list[tuple[str, int, list[str]]]]:
    """Per table: (column, cells, tasks that changed it), most cells first."""
    found: dict[str, dict[str, tuple[int, list[str]]]] = {}
    for task in tasks:
        for name, n in (_json_field(task.get("changes")) or {}).items():
            table, _, column = str(name).partition(".")
            cells, names = found.setdefault(table, {}).get(column, (0, []))
            found[table][column] = (cells + int(n), [*names, str(task["task"])])
    return {table: sorted(((c, n, t) for c, (n, t) in columns.items()),
                          key=lambda item: (-item[1], item[0]))
            for table, columns in sorted(found.items())}


# ----------------------------------------------------------------------- sections


def _header(run: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> str:
    started, ended = _time(run.get("started_at")), _time(run.get("ended_at"))
    duration = (ended - started).total_seconds() if started and ended else None
    status = str(run.get("status") or "unknown")
    facts = [
        ("mode", escape(str(run.get("mode") or ""))),
        ("status", f'<span class="badge {STATUS_CLASS.get(status, "")}">'
                   f"{escape(status)}</span>"),
        ("duration", escape(_seconds(duration)) if duration is not None else "still running"),
        ("started", escape(f"{started:%Y-%m-%d %H:%M:%S} UTC") if started else ""),
        ("tasks", f"{len(tasks):,}"),
        ("host", escape(str(run.get("host") or ""))),
    ]
    if run.get("only_tasks"):
        facts.append(("only", escape(str(run["only_tasks"]))))
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{v}</dd></div>" for k, v in facts)
    params = _json_field(run.get("params")) or {}
    param_text = (", ".join(f"{k}={v}" for k, v in params.items())
                  if isinstance(params, dict) else str(params))
    parts = [
        f'<h1>{escape(str(run.get("flow") or "run"))} '
        f'<span class="id">run {escape(str(run.get("run_id", "")))}</span></h1>',
        f'<dl class="facts">{items}</dl>',
    ]
    if param_text:
        parts.append(f'<div class="params">parameters: <code>{escape(param_text)}</code></div>')
    if run.get("error"):
        parts.append(f'<div class="error">error: {escape(str(run["error"]))}</div>')
    return "<header>" + "".join(parts) + "</header>"


def _lanes(tasks: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[Mapping[str, Any]]]]:
    """Tasks grouped by worker, lanes and tasks in the order they started."""
    lanes: dict[str, list[Mapping[str, Any]]] = {}
    ordered = sorted(tasks, key=lambda t: (_time(t.get("started_at")) or datetime.max,
                                           t.get("id") or 0))
    for task in ordered:
        lanes.setdefault(str(task.get("worker") or "unknown worker"), []).append(task)
    return list(lanes.items())


def timeline(run: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> str:
    """The tasks as an SVG Gantt chart: a lane per worker, a bar per task."""
    if not tasks:
        return '<p class="muted">This run has no task runs.</p>'
    starts = [s for t in tasks if (s := _time(t.get("started_at")))]
    ends = [e for t in tasks if (e := _time(t.get("ended_at")))]
    run_start, run_end = _time(run.get("started_at")), _time(run.get("ended_at"))
    origin = min([*starts, *([run_start] if run_start else [])], default=None)
    finish = max([*ends, *starts, *([run_end] if run_end else [])], default=None)
    if origin is None or finish is None:
        return '<p class="muted">The tasks of this run have no times.</p>'
    span = max((finish - origin).total_seconds(), 0.001)
    step = _nice_step(span)
    axis_end = math.ceil(span / step - 1e-9) * step
    plot = WIDTH - LABEL - RIGHT

    def x(moment: datetime) -> float:
        return LABEL + (moment - origin).total_seconds() / axis_end * plot

    lanes = _lanes(tasks)
    height = AXIS + sum(LANE_HEAD + ROW * len(members) for _, members in lanes) + 8
    out = [f'<svg viewBox="0 0 {WIDTH} {height}" '
           f'width="{WIDTH}" height="{height}" role="img" '
           f'aria-label="timeline of {len(tasks)} tasks">']
    y = AXIS
    for index, (worker, members) in enumerate(lanes):
        lane_height = LANE_HEAD + ROW * len(members)
        fill = "#f3f5f8" if index % 2 == 0 else "#fafbfc"
        out.append(f'<rect class="lane" x="0" y="{y}" width="{WIDTH}" height="{lane_height}" '
                   f'fill="{fill}"/>')
        out.append(f'<text x="8" y="{y + 16}" font-size="12" font-weight="600" '
                   f'fill="#4b5563">worker {escape(worker)} '
                   f'<tspan fill="#9aa3ad" font-weight="400">({len(members)} '
                   f'task{"s" if len(members) != 1 else ""})</tspan></text>')
        y += LANE_HEAD
        for task in members:
            out.append(_bar(task, y, x, finish))
            y += ROW
    ticks, value = [], 0.0
    while value <= axis_end + step / 1000:
        ticks.append(value)
        value += step
    for tick in ticks:
        tx = LABEL + tick / axis_end * plot
        out.append(f'<line x1="{tx:.1f}" y1="{AXIS - 6}" x2="{tx:.1f}" y2="{height - 8}" '
                   'stroke="#c9ced6" stroke-width="1" stroke-dasharray="2 3"/>')
        out.append(f'<text x="{tx:.1f}" y="{AXIS - 12}" font-size="11" fill="#6b7280" '
                   f'text-anchor="middle">{escape(_tick_label(tick, step))}</text>')
    out.append(f'<line x1="{LABEL}" y1="{AXIS - 6}" x2="{LABEL + plot}" y2="{AXIS - 6}" '
               'stroke="#9aa3ad" stroke-width="1"/>')
    out.append("</svg>")
    legend = "".join(f'<span style="--c:{color}">{escape(status)}</span>'
                     for status, color in COLORS.items())
    return "".join(out) + f'<div class="legend">{legend}<span style="--c:transparent">' \
        "time from the start of the run</span></div>"


def _bar(task: Mapping[str, Any], y: int, x: Callable[[datetime], float],
         finish: datetime) -> str:
    name = str(task.get("task") or "?")
    status = str(task.get("status") or "running")
    start = _time(task.get("started_at")) or finish
    end = _time(task.get("ended_at"))
    x0, x1 = x(start), x(end or finish)
    width = max(x1 - x0, 2.0)
    color = COLORS.get(status, COLORS["running"])
    seconds = task.get("seconds")
    if seconds is None and end is not None:
        seconds = (end - start).total_seconds()
    label = _seconds(seconds) if end is not None else "no end recorded"
    tip = f"{name} ({status}) on {task.get('worker') or '?'}: {label}"
    if task.get("error"):
        tip += f"\n{task['error']}"
    bar_y = y + (ROW - BAR) / 2
    baseline = y + ROW / 2 + 4
    opacity = "" if end is not None else ' fill-opacity="0.45"'
    shown = name if len(name) <= MAX_LABEL else name[:MAX_LABEL - 1] + "…"
    text_width = len(label) * 6.2
    if x0 + width + 6 + text_width <= WIDTH:
        at, anchor, fill = x0 + width + 6, "start", "#6b7280"
    elif width >= text_width + 12:
        at, anchor, fill = x0 + width - 6, "end", "#ffffff"
    else:
        at, anchor, fill = x0 - 6, "end", "#6b7280"
    return (
        f'<g class="task" data-task="{escape(name)}">'
        f"<title>{escape(tip)}</title>"
        f'<text x="{LABEL - 10}" y="{baseline:.1f}" font-size="12.5" fill="#1f2430" '
        f'text-anchor="end">{escape(shown)}</text>'
        f'<rect class="bar" x="{x0:.1f}" y="{bar_y:.1f}" width="{width:.1f}" height="{BAR}" '
        f'rx="3" fill="{color}"{opacity}/>'
        f'<text x="{at:.1f}" y="{baseline:.1f}" font-size="11" fill="{fill}" '
        f'text-anchor="{anchor}">{escape(label)}</text>'
        "</g>"
    )


def changes_table(tasks: Sequence[Mapping[str, Any]]) -> str:
    """Cells changed per table and column, with a bar each (scaled to the largest)."""
    found = changes_by_column(tasks)
    if not found:
        return '<p class="muted">This run changed no cells.</p>'
    largest = max(n for columns in found.values() for _, n, _ in columns) or 1
    rows = []
    for table, columns in found.items():
        total = sum(n for _, n, _ in columns)
        rows.append(f'<tr class="table-head"><td>{escape(table)}</td>'
                    f'<td class="muted small nowrap">{len(columns)} column'
                    f'{"s" if len(columns) != 1 else ""}</td>'
                    f'<td class="num">{total:,}</td><td></td><td></td></tr>')
        for column, cells, by in columns:
            bar = (f'<div class="bar" style="width:{100 * cells / largest:.2f}%"></div>'
                   if cells else "")
            rows.append(
                f'<tr class="change" data-column="{escape(f"{table}.{column}")}">'
                f"<td></td><td><code>{escape(column)}</code></td>"
                f'<td class="num">{cells:,}</td>'
                f'<td class="barcell">{bar}</td>'
                f'<td class="muted small">{escape(", ".join(dict.fromkeys(by)))}</td></tr>')
    return ('<table class="changes"><colgroup><col class="t"><col class="c"><col class="n">'
            '<col class="b"><col></colgroup><thead><tr><th>table</th><th>column</th>'
            '<th class="num">cells</th><th>share of the largest</th><th>changed by</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _details(details: Any) -> str:
    details = _json_field(details)
    if not isinstance(details, dict) or not details:
        return ""
    parts = []
    for key, value in details.items():
        if isinstance(value, list):
            text = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            text = ", ".join(f"{k} {v}" for k, v in value.items())
        else:
            text = str(value)
        parts.append(f"{key}: {text}")
    return "; ".join(parts)


def tasks_table(run: Mapping[str, Any], tasks: Sequence[Mapping[str, Any]]) -> str:
    """Every task run with its worker, status, times and counts."""
    if not tasks:
        return '<p class="muted">No task runs.</p>'
    origin = _time(run.get("started_at"))
    head = "".join(f'<th class="num">{escape(c.replace("_", " "))}</th>' for c in COUNTS)
    rows = []
    for task in sorted(tasks, key=lambda t: (_time(t.get("started_at")) or datetime.max,
                                             t.get("id") or 0)):
        start = _time(task.get("started_at"))
        offset = (f"+{(start - origin).total_seconds():.2f}s" if start and origin else "")
        status = str(task.get("status") or "")
        counts = "".join(f'<td class="num">{_num(task.get(c))}</td>' for c in COUNTS)
        detail = escape(_details(task.get("details")))
        error = (f'<div class="err">{escape(str(task["error"]))}</div>'
                 if task.get("error") else "")
        rows.append(
            f'<tr><td><code>{escape(str(task.get("task")))}</code></td>'
            f'<td><span class="badge {STATUS_CLASS.get(status, "")}">{escape(status)}</span></td>'
            f'<td class="small">{escape(str(task.get("worker") or ""))}</td>'
            f'<td class="num">{escape(offset)}</td>'
            f'<td class="num">{escape(_seconds(task.get("seconds")))}</td>{counts}'
            f'<td class="small muted">{detail}{error}</td></tr>')
    return ('<table class="tasks"><thead><tr><th>task</th><th>status</th><th>worker</th>'
            f'<th class="num">start</th><th class="num">seconds</th>{head}<th>details</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


# ------------------------------------------------------------------------- render


def render(run: dict[str, Any], tasks: list[dict[str, Any]]) -> str:
    """The whole page for ``run`` (a ``history.get_run`` row) and its ``task_runs``."""
    title = f"loader run {run.get('run_id', '')}: {run.get('flow') or ''}"
    generated = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{CSS}</style></head><body>",
        _header(run, tasks),
        f"<section><h2>Timeline</h2>{timeline(run, tasks)}</section>",
        f"<section><h2>Changes by table and column</h2>{changes_table(tasks)}</section>",
        f"<section><h2>Tasks</h2>{tasks_table(run, tasks)}</section>",
        f"<footer>Written by loader report at {escape(generated)}. Task times are the "
        "warehouse clock's (UTC).</footer>",
        "</body></html>",
        "",
    ])


def write_report(run_id: int, path: Path | str, warehouse: str | None = None) -> Path:
    """Write the report of ``run_id`` to ``path``; an unknown run is a usage error."""
    run, tasks = commands.show(run_id, warehouse)
    target = Path(path)
    if target.parent != Path(""):
        target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(run, tasks), encoding="utf-8")
    return target
