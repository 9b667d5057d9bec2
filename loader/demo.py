"""``loader demo``: the sales flow end to end on SQLite, told as a short story.

The demo writes a data directory with :mod:`loader.salesdata` (region files
with a few bad rows, a shop database with gaps in its fx rates), runs
``sales.nightly``, changes a handful of things at the sources (sale edits and
deletes, one fx correction, one customer's segment, a new column in one
region file), runs ``sales.refresh`` and reads the run history back: which
cells the refresh re-derived, column by column, which aggregate groups it
rebuilt, and how long it took next to the nightly.

Everything it creates is listed in a marker file in the demo directory, so
that a rerun removes exactly those files and starts from scratch; a
directory without the marker is refused unless it is empty.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.markup import escape
from rich.text import Text

from loader import flow as flows
from loader import history, meta
from loader import salesdata as sd
from loader.errors import ConfigError, LoaderError
from loader.processors.aggregate import Aggregate
from loader.processors.csv_extract import CsvSnapshot
from loader.processors.derive import Derive
from loader.processors.quality import Quality
from loader.processors.sql_extract import SqlExtract
from loader.runner import RunReport, run_flow
from loader.warehouse import Warehouse, mask_url

MARKER = ".loader-demo"
DATA = "data"
WAREHOUSE_FILE = "warehouse.db"
DEFAULT_ROWS = 20_000
MIN_ROWS = 200
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
NEW_COLUMN = "promo_code"
SEEDS = {"edit": 11, "delete": 12, "fx": 13, "segment": 14, "column": 15}

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress callback says nothing."""


@dataclass
class SourceChanges:
    """What the demo changed at the sources, as the change functions reported it."""

    edited: dict[str, list[str]]
    edited_fields: dict[str, int]
    deleted: dict[str, list[str]]
    fx: list[tuple[str, str, float | None, float | None]]
    segments: list[tuple[str, str | None, str | None]]
    new_column: tuple[str, str]

    @property
    def edited_count(self) -> int:
        return sum(map(len, self.edited.values()))

    @property
    def deleted_count(self) -> int:
        return sum(map(len, self.deleted.values()))


@dataclass
class Demo:
    """One demo: where it ran, its two runs with their task history, and the outcome."""

    directory: Path
    data_dir: Path
    warehouse: str
    scale: sd.Scale
    fx_gaps: int
    nightly: RunReport
    refresh: RunReport
    nightly_tasks: list[dict[str, Any]]
    refresh_tasks: list[dict[str, Any]]
    changes: SourceChanges
    kinds: dict[str, str]
    extracts: dict[str, str]
    aggregates: dict[str, str]
    group_totals: dict[str, int]
    open_exceptions: dict[str, int]
    rejects: int
    seconds: float = 0.0

    def tasks_of(self, *kinds: str) -> set[str]:
        """The names of the flow's tasks of these kinds (see :func:`kind`)."""
        return {name for name, k in self.kinds.items() if k in kinds}


# ----------------------------------------------------------------- the directory


def default_warehouse(directory: Path) -> str:
    """``sqlite:///DIR/warehouse.db``: the demo's own warehouse inside its directory."""
    return f"sqlite:///{directory / WAREHOUSE_FILE}"


def _sqlite_file(url: str) -> Path | None:
    """The database file of a file-based SQLite URL, else None."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"not a database URL: {mask_url(url)!r}") from None
    if parsed.get_backend_name() != "sqlite" or not parsed.database \
            or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _inside(directory: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def _recorded(directory: Path) -> list[Path]:
    """The files a previous demo in ``directory`` created (only those inside it)."""
    try:
        listed = json.loads((directory / MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{directory / MARKER} is not a loader demo marker file; "
                          "remove the directory yourself or choose another --dir") from None
    paths = [directory / str(name) for name in listed]
    return [p for p in paths if _inside(directory, p)]


def _remove(path: Path) -> None:
    for candidate in _with_side_files(path):
        if candidate.is_file() or candidate.is_symlink():
            candidate.unlink()


def _with_side_files(path: Path) -> list[Path]:
    return [path, *(path.with_name(path.name + s) for s in SQLITE_SIDE_FILES)]


def prepare(directory: Path, warehouse: str, regions: Iterable[str]) -> None:
    """Make ``directory`` ready for a fresh demo, removing only a previous demo's files.

    Refuses, before removing anything: a path that is not a directory; a
    non-empty directory without the demo's marker file; a data folder holding
    files the demo did not make; a warehouse that is not the demo's own and
    already holds runs.
    """
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory; choose another --dir")
    recorded: list[Path] = []
    if directory.is_dir() and any(directory.iterdir()):
        if not (directory / MARKER).is_file():
            raise ConfigError(
                f"{directory} exists and does not look like a loader demo directory (it has "
                f"files but no {MARKER} marker); choose another --dir or empty it")
        recorded = _recorded(directory)
    ours = {side.resolve() for path in recorded for side in _with_side_files(path)}
    data = directory / DATA
    if data.is_dir():
        others = sorted(p.name for p in data.iterdir() if p.resolve() not in ours)
        if others:
            raise ConfigError(
                f"{data} holds files the demo did not make ({', '.join(others[:5])}); the "
                "demo would load or replace them: move them away or choose another --dir")
    db_file = _sqlite_file(warehouse)
    own_db = db_file is not None and _inside(directory, db_file) and (
        not db_file.exists() or db_file.resolve() in ours)
    if not own_db:
        _require_no_runs(warehouse)
    for path in recorded:
        _remove(path)
    if data.is_dir() and not any(data.iterdir()):
        data.rmdir()
    created = [f"{DATA}/{path.name}" for path in _planned_data(data, regions)]
    if own_db and db_file is not None:
        created.append(db_file.resolve().relative_to(directory.resolve()).as_posix())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text(json.dumps({"files": created}, indent=1) + "\n",
                                    encoding="utf-8")


def _require_no_runs(warehouse: str) -> None:
    """A warehouse that is not the demo's own must not hold runs already."""
    wh = Warehouse(warehouse)
    try:
        with wh.engine.connect() as conn:
            earlier = history.list_runs(conn, 1)
    finally:
        wh.dispose()
    if earlier:
        raise ConfigError(
            f"the warehouse {wh.masked_url} already holds runs (the last is run "
            f"{earlier[0]['run_id']}); the demo needs an empty warehouse: omit --warehouse "
            "to use a new one inside the demo directory")


def _planned_data(data_dir: Path, regions: Iterable[str]) -> list[Path]:
    return [*(data_dir / f"sales_{r}.csv" for r in regions), data_dir / sd.SHOP_DB]


def scale_for(rows: int) -> sd.Scale:
    """A realistic data directory of about ``rows`` sales in four regions."""
    if rows < MIN_ROWS:
        raise ConfigError(f"--rows must be at least {MIN_ROWS}, not {rows}")
    return sd.Scale(sales=rows, customers=max(50, rows // 10),
                    products=max(20, min(300, rows // 60)),
                    days=90 if rows >= 5_000 else 30)


# --------------------------------------------------------------- the shop database


def _shop(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(data_dir / sd.SHOP_DB)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def count_fx_gaps(data_dir: Path) -> int:
    """How many (currency, day) pairs between the first and last day have no rate."""
    rows = _shop(data_dir, "SELECT COUNT(DISTINCT UPPER(currency)), "
                           "julianday(MAX(day)) - julianday(MIN(day)) + 1, COUNT(*) "
                           "FROM fx_rates")
    currencies, days, present = rows[0]
    return int(currencies * days) - int(present) if present else 0


def _change_stamp(data_dir: Path) -> datetime:
    """Now, or just after the latest ``updated_at`` in the shop if the clock is behind it."""
    latest = max((v for (v,) in _shop(data_dir, "SELECT MAX(updated_at) FROM customers "
                                                "UNION ALL SELECT MAX(updated_at) FROM fx_rates "
                                                "UNION ALL SELECT MAX(updated_at) FROM products")
                  if v), default=None)
    now = datetime.now(UTC)
    if latest is not None:
        after = datetime.fromisoformat(latest).replace(tzinfo=UTC) + timedelta(seconds=1)
        now = max(now, after)
    return now


def apply_changes(data_dir: Path, rows: int, region: str) -> SourceChanges:
    """The demo's batch of source changes: a few sale edits, two deletes, one fx
    correction, one customer changing segment and a new column in ``region``'s file."""
    edited: dict[str, Any] = {"edited": 0, "ids": {}, "fields": {}}
    for attempt in range(5):
        edited = sd.edit_sales(data_dir, min(1.0, 5 / rows), SEEDS["edit"] + 100 * attempt)
        if edited["edited"]:
            break
    deleted = sd.delete_sales(data_dir, 2, SEEDS["delete"])
    rates = {(c, d): r for c, d, r in _shop(data_dir, "SELECT currency, day, rate_to_aud "
                                                      "FROM fx_rates")}
    segments = dict(_shop(data_dir, "SELECT customer_id, segment FROM customers"))
    now = _change_stamp(data_dir)
    fx = sd.correct_fx(data_dir, 1, SEEDS["fx"], now)
    moved = sd.change_segments(data_dir, 1, SEEDS["segment"], now)
    new_rates = {(c, d): r for c, d, r in _shop(data_dir, "SELECT currency, day, rate_to_aud "
                                                          "FROM fx_rates")}
    new_segments = dict(_shop(data_dir, "SELECT customer_id, segment FROM customers"))
    column = sd.add_column(data_dir, region, NEW_COLUMN, SEEDS["column"])
    return SourceChanges(
        edited={r: ids for r, ids in edited["ids"].items() if ids},
        edited_fields={k: v for k, v in edited["fields"].items() if v},
        deleted={r: ids for r, ids in deleted["ids"].items() if ids},
        fx=[(code, day, rates.get((code, day)), new_rates.get((code, day)))
            for code, day in fx["keys"]],
        segments=[(cid, segments.get(cid), new_segments.get(cid)) for cid in moved["ids"]],
        new_column=(f"sales_{column['region']}.csv", column["column"]))


# ------------------------------------------------------------------------ history


def column_changes(tasks: Iterable[Mapping[str, Any]],
                   only: set[str] | None = None) -> dict[str, dict[str, int]]:
    """Cells changed per table and column, summed over ``tasks`` (or those named in ``only``)."""
    found: dict[str, dict[str, int]] = {}
    for task in tasks:
        if only is not None and task["task"] not in only:
            continue
        for name, n in (task.get("changes") or {}).items():
            table, _, column = name.partition(".")
            per = found.setdefault(table, {})
            per[column] = per.get(column, 0) + int(n)
    return found


def cells_changed(tasks: Iterable[Mapping[str, Any]]) -> int:
    """Cells of tracked tables that a run changed (the exceptions' opened/resolved aside)."""
    return sum(n for table, columns in column_changes(tasks).items() if table != "exceptions"
               for n in columns.values())


def groups_rebuilt(tasks: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """``details['groups_rebuilt']`` of each task that reports it, by task."""
    return {t["task"]: int(t["details"]["groups_rebuilt"]) for t in tasks
            if isinstance(t.get("details"), dict) and "groups_rebuilt" in t["details"]}


def kind(processor: object) -> str:
    """``extract``, ``derive``, ``aggregate``, ``quality`` or ``other``."""
    if isinstance(processor, CsvSnapshot | SqlExtract):
        return "extract"
    if isinstance(processor, Derive):
        return "derive"
    if isinstance(processor, Aggregate):
        return "aggregate"
    return "quality" if isinstance(processor, Quality) else "other"


def _live_rows(conn: sa.Connection, table: str) -> int:
    """The rows of a tracked table (its view shows the live rows only)."""
    return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(table)))
               .scalar_one())


def _outcome(wh: Warehouse, run_ids: tuple[int, int], aggregates: Mapping[str, str]
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int],
                        dict[str, int], int]:
    e = meta.exceptions
    with wh.engine.connect() as conn:
        first, second = (history.task_runs(conn, run_id) for run_id in run_ids)
        totals = {target: _live_rows(conn, target) for target in aggregates.values()}
        opened = dict(conn.execute(sa.select(e.c.rule, sa.func.count())
                                   .where(e.c.resolved_at.is_(None))
                                   .group_by(e.c.rule)).tuples().all())
        rejects = conn.execute(sa.select(sa.func.count()).select_from(meta.rejects)).scalar_one()
    return first, second, totals, {k: int(v) for k, v in opened.items()}, int(rejects)


def _must_succeed(report: RunReport, warehouse: str) -> None:
    if not report.ok:
        raise LoaderError(
            f"the demo's {report.flow} run {report.run_id} failed: {report.error}; see "
            f"loader show {report.run_id} --warehouse {shlex.quote(mask_url(warehouse))}")


def run_demo(directory: Path | str = Path("demo"), rows: int = DEFAULT_ROWS,
             warehouse: str | None = None, progress: Progress = _quiet) -> Demo:
    """Generate data, run the nightly, change the sources, run the refresh; return it all."""
    started = time.monotonic()
    directory = Path(directory)
    url = warehouse or default_warehouse(directory)
    scale = scale_for(rows)
    nightly_flow, refresh_flow = flows.load("sales.nightly"), flows.load("sales.refresh")
    progress(f"preparing {directory}")
    prepare(directory, url, scale.regions)
    data_dir = directory / DATA
    progress(f"writing {rows:,} sales and the shop database")
    sd.generate(data_dir, scale)
    gaps = count_fx_gaps(data_dir)
    params = {"data_dir": str(data_dir)}
    kinds = {p.name: kind(p) for p in refresh_flow.processors}
    extracts = {p.name: p.table for p in refresh_flow.processors
                if isinstance(p, CsvSnapshot | SqlExtract)}
    aggregates = {p.name: p.target for p in refresh_flow.processors if isinstance(p, Aggregate)}
    wh = Warehouse(url)
    try:
        progress("running sales.nightly (full)")
        nightly = run_flow(wh, nightly_flow, params=params)
        _must_succeed(nightly, url)
        progress("changing the sources")
        # The first region file already has an extra column (the generator's quirk).
        changes = apply_changes(data_dir, rows, scale.regions[1])
        progress("running sales.refresh")
        refresh = run_flow(wh, refresh_flow, params=params)
        _must_succeed(refresh, url)
        first, second, totals, opened, rejects = _outcome(
            wh, (nightly.run_id, refresh.run_id), aggregates)
    finally:
        wh.dispose()
    return Demo(directory=directory, data_dir=data_dir, warehouse=url, scale=scale,
                fx_gaps=gaps, nightly=nightly, refresh=refresh, nightly_tasks=first,
                refresh_tasks=second, changes=changes, kinds=kinds, extracts=extracts,
                aggregates=aggregates, group_totals=totals, open_exceptions=opened,
                rejects=rejects, seconds=time.monotonic() - started)


# -------------------------------------------------------------------------- story


def _ids(by_region: Mapping[str, list[str]], most: int = 4) -> str:
    ids = [i for found in by_region.values() for i in found]
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def _counts(items: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in items.items())


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def source_lines(changes: SourceChanges) -> list[str]:
    """What changed at the sources, one short phrase each (plain text)."""
    lines = []
    if changes.edited_count:
        lines.append(f"{_plural(changes.edited_count, 'sale')} edited ({_ids(changes.edited)}: "
                     f"{_counts(changes.edited_fields)})")
    if changes.deleted_count:
        lines.append(f"{_plural(changes.deleted_count, 'sale')} deleted "
                     f"({_ids(changes.deleted)})")
    for code, day, old, new in changes.fx:
        lines.append(f"{code.upper()} rate of {day} corrected from {old} to {new}")
    for cid, old_segment, new_segment in changes.segments:
        lines.append(f"customer {cid} moved from {old_segment or 'no'} segment to "
                     f"{new_segment}")
    file_name, column = changes.new_column
    lines.append(f"new column {column} in {file_name}")
    return lines


def rederived(demo: Demo) -> dict[str, dict[str, int]]:
    """Cells the refresh re-derived (Derive and Aggregate tasks), per table and column."""
    return column_changes(_in_flow_order(demo), demo.tasks_of("derive", "aggregate"))


def picked_up(demo: Demo) -> dict[str, dict[str, int]]:
    """Cells the refresh loaded from the sources (the extract tasks), per table and column."""
    return column_changes(_in_flow_order(demo), demo.tasks_of("extract"))


def _in_flow_order(demo: Demo) -> list[dict[str, Any]]:
    """The refresh's task runs in the order of the flow (not the order they started)."""
    order = {name: index for index, name in enumerate(demo.kinds)}
    return sorted(demo.refresh_tasks, key=lambda t: order.get(t["task"], len(order)))


def look_further(demo: Demo) -> list[str]:
    """The commands to look at the demo's runs, with its warehouse and ids filled in."""
    wh = f"--warehouse {shlex.quote(mask_url(demo.warehouse))}"
    rid = demo.refresh.run_id
    return [f"loader runs {wh}",
            f"loader show {rid} {wh}",
            f"loader changes sales --since {rid} {wh}",
            f"loader report {rid} -o run.html {wh}"]


def story(demo: Demo) -> list[str]:
    """The demo told in a few lines of rich markup (every value escaped)."""
    s, n, r = demo.scale, demo.nightly, demo.refresh
    x = escape
    nightly_cells, refresh_cells = cells_changed(demo.nightly_tasks), cells_changed(
        demo.refresh_tasks)
    loaded = sum(t["inserted"] for t in demo.nightly_tasks if t["task"] == "sales_files")
    rejected = sum(t["rejected"] for t in demo.nightly_tasks if t["task"] == "sales_files")
    lines = [
        f"[bold]loader demo[/] in {x(str(demo.directory))}: {s.sales:,} sales in "
        f"{len(s.regions)} region files ({x(', '.join(s.regions))}), a shop database of "
        f"{s.customers:,} customers, {s.products:,} products and fx rates with "
        f"{_plural(demo.fx_gaps, 'gap')}",
        f"[bold]1. nightly[/]  run {n.run_id} ({x(n.flow)}, {n.mode}) [green]{n.status}[/] "
        f"in {n.seconds:.1f}s: {loaded:,} sales loaded, {rejected:,} bad rows rejected, "
        f"{nightly_cells:,} cells written",
        "[bold]2. changed at the sources[/]",
        *(f"   • {x(line)}" for line in source_lines(demo.changes)),
        f"[bold]3. refresh[/]  run {r.run_id} ({x(r.flow)}, {r.mode}) [green]{r.status}[/] "
        f"in {r.seconds:.1f}s, [bold]{r.seconds / n.seconds:.0%}[/] of the nightly: "
        f"{refresh_cells:,} cells changed against {nightly_cells:,}",
    ]
    rebuilt = groups_rebuilt(demo.refresh_tasks)
    groups = {target: f"{rebuilt[task]:,} of {demo.group_totals.get(target, 0):,} groups "
              "rebuilt" for task, target in demo.aggregates.items() if task in rebuilt}
    deletes: dict[str, int] = {}
    for task in demo.refresh_tasks:
        if task["task"] in demo.extracts and task["deleted"]:
            table = demo.extracts[task["task"]]
            deletes[table] = deletes.get(table, 0) + int(task["deleted"])
    lines += _block("picked up", picked_up(demo),
                    {t: f"and {_plural(n, 'row')} deleted" for t, n in deletes.items()})
    lines += _block("re-derived", rederived(demo), groups)
    found = demo.open_exceptions
    refreshed = column_changes(demo.refresh_tasks, demo.tasks_of("quality")).get("exceptions", {})
    detail = _counts(dict(sorted(found.items(), key=lambda kv: -kv[1])))
    lines.append(f"[bold]4. open exceptions[/] {sum(found.values()):,}"
                 + (f" ({x(detail)})" if detail else "")
                 + f", {refreshed.get('opened', 0):,} opened and "
                 f"{refreshed.get('resolved', 0):,} resolved by the refresh; "
                 f"[bold]rejects[/] {demo.rejects:,}")
    lines.append("[bold]look further:[/]")
    lines += [f"   {x(command)}" for command in look_further(demo)]
    lines.append(f"[dim]demo finished in {demo.seconds:.1f}s[/]")
    return lines


def _block(title: str, found: Mapping[str, Mapping[str, int]],
           notes: Mapping[str, str]) -> list[str]:
    """Aligned lines ``title table  column n, column n  (note)``, one per table."""
    if not found:
        return [f"   {title} nothing"]
    width = max(map(len, found))
    lines = []
    for index, (table, columns) in enumerate(found.items()):
        head = f"   {title.ljust(10)} " if index == 0 else " " * 14
        line = f"{head}[cyan]{escape(table.ljust(width))}[/]  " + ", ".join(
            f"{escape(c)} {v:,}" for c, v in sorted(columns.items(), key=lambda kv: -kv[1]))
        if table in notes:
            line += f"  [dim]({escape(notes[table])})[/]"
        lines.append(line)
    return lines


def plain(lines: Iterable[str]) -> str:
    """The story without its markup."""
    return "\n".join(Text.from_markup(line).plain for line in lines)
