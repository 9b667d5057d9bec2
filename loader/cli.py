"""The ``loader`` command line: a thin layer over :mod:`loader.commands`.

Errors become one line on stderr in one place (``--traceback`` shows the
stack). Exit codes: 0 success, 1 a failed run or check, 2 a usage error.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.tree import Tree

from loader import commands
from loader.errors import ConfigError, FlowError
from loader.execute import describe
from loader.runner import RunReport, TaskState
from loader.warehouse import mask_url

USAGE_ERRORS = (ConfigError, FlowError)
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 1000)


class LoaderGroup(click.Group):
    """Turns every error into one clear line and the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if ctx.meta.get("traceback"):
                errors.print(mask_url(traceback.format_exc()), markup=False, highlight=False)
            errors.print(f"error: {describe(exc)}", markup=False, highlight=False)
            ctx.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)


def warehouse_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--warehouse URL``, defaulting to LOADER_WAREHOUSE_URL."""
    return click.option("--warehouse", "warehouse", metavar="URL", default=None,
                        help="Warehouse URL (default: $LOADER_WAREHOUSE_URL or "
                             "sqlite:///warehouse.db).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)


@click.group(cls=LoaderGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--traceback", "show_traceback", is_flag=True,
              help="Show the stack trace of an error.")
@click.version_option(package_name="loader")
@click.pass_context
def main(ctx: click.Context, show_traceback: bool) -> None:
    """An incremental, change-tracking warehouse loader.

    Example: loader run sales.nightly -p data_dir=./data
    """
    ctx.meta["traceback"] = show_traceback


@main.command()
@click.argument("flow")
@click.option("--full", is_flag=True, help="Rebuild everything, whatever the flow's mode.")
@click.option("--only", metavar="A,B", help="Run these tasks and what they need upstream.")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="A flow parameter; repeat for several.")
@warehouse_option
@click.option("--wait", type=float, default=0.0, metavar="SECONDS",
              help="Wait this long for another run to release the warehouse.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@json_option
def run(flow: str, full: bool, only: str | None, params: Sequence[str], warehouse: str | None,
        wait: float, quiet: bool, as_json: bool) -> None:
    """Run FLOW (module.attribute) against the warehouse.

    Example: loader run sales.refresh -p data_dir=./data --only sales_files
    """
    view = None if quiet or as_json or not console.is_terminal else LiveView()
    try:
        report = commands.run(flow, warehouse=warehouse, full=full,
                              only=commands.parse_only(only),
                              params=commands.parse_params(params), wait=wait,
                              watcher=view)
    finally:
        if view is not None:
            view.stop()
    if as_json:
        click.echo(json.dumps(report_json(report), default=str, sort_keys=True))
    elif not quiet:
        if view is None:
            console.print(task_tree(report.tasks, f"{report.flow} ({report.mode})"))
        status = "[green]succeeded[/]" if report.ok else "[red]failed[/]"
        console.print(f"run {report.run_id} {status} in {report.seconds:.1f}s"
                      + (f": {mask_url(report.error)}" if report.error else ""))
    if not report.ok:
        if quiet and report.error:
            errors.print(f"error: {mask_url(report.error)}", markup=False)
        sys.exit(1)


def report_json(report: RunReport) -> dict[str, Any]:
    return {"run_id": report.run_id, "flow": report.flow, "mode": report.mode,
            "status": report.status, "error": report.error,
            "seconds": round(report.seconds, 3),
            "tasks": [{"task": s.name, "state": s.state, "stage": s.stage,
                       "result": s.info if isinstance(s.info, dict) else None}
                      for s in report.tasks]}


ICONS = {"PENDING": "[dim]○ pending[/]", "RECEIVED": "[dim]○ queued[/]",
         "STARTED": "[yellow]◐ running[/]", "PROGRESS": "[yellow]◐ running[/]",
         "RETRY": "[yellow]↻ retrying[/]", "SUCCESS": "[green]● done[/]",
         "FAILURE": "[red]✗ failed[/]", "REVOKED": "[red]✗ revoked[/]"}


def _task_line(state: TaskState) -> str:
    line = f"{state.name}  {ICONS.get(state.state, state.state)}"
    info = state.info
    if state.state == "PROGRESS" and isinstance(info, dict):
        line += f"  {info.get('done', 0):,} rows"
    elif state.state == "SUCCESS" and isinstance(info, dict):
        parts = [f"{info.get(k, 0):,} {k.replace('_', ' ')}" for k in
                 ("rows_read", "inserted", "updated", "deleted", "rejected") if info.get(k)]
        line += "  " + (", ".join(parts) or "nothing to do")
        if info.get("errors"):
            line += f"  [red]{len(info['errors'])} error(s)[/]"
    elif state.state == "FAILURE":
        line += f"  {mask_url(str(info))}"
    return line


def task_tree(states: Sequence[TaskState], title: str) -> Tree:
    tree = Tree(f"[bold]{title}[/]")
    stages: dict[int, list[TaskState]] = {}
    for state in states:
        stages.setdefault(state.stage, []).append(state)
    for index, members in sorted(stages.items()):
        branch = tree.add(f"stage {index + 1}" + (" (side by side)" if len(members) > 1 else ""))
        for state in members:
            branch.add(_task_line(state), highlight=False)
    return tree


class LiveView:
    """The task tree, redrawn as states change."""

    def __init__(self) -> None:
        self.live: Live | None = None

    def __call__(self, states: Sequence[TaskState]) -> None:
        tree = task_tree(states, "run")
        if self.live is None:
            self.live = Live(tree, console=console, refresh_per_second=8)
            self.live.start()
        else:
            self.live.update(tree)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


@main.command()
@click.argument("flow")
def check(flow: str) -> None:
    """Check that every task's reads are provided before it runs; print the flow.

    Example: loader check sales.nightly
    """
    found, problems = commands.check(flow)
    states = [TaskState(p.name, "", i) for i, stage in enumerate(found.stages) for p in stage]
    console.print(task_tree(states, f"{flow} ({found.mode})"))
    if problems:
        for problem in problems:
            errors.print(f"error: {problem}", markup=False)
        sys.exit(1)
    console.print("[green]ok[/]: every read is provided upstream")


@main.command()
@warehouse_option
def init(warehouse: str | None) -> None:
    """Create or upgrade the loader's own tables (Alembic migrations).

    Example: loader init --warehouse postgresql://localhost/dw
    """
    before, after = commands.init(warehouse)
    console.print(f"warehouse at revision {after}" + (f" (was {before})" if before != after
                                                       else " (already current)"))


@main.group()
def db() -> None:
    """Warehouse schema commands."""


@db.command("upgrade")
@warehouse_option
def db_upgrade(warehouse: str | None) -> None:
    """Apply the loader's migrations (same as loader init).

    Example: loader db upgrade
    """
    before, after = commands.init(warehouse)
    console.print(f"warehouse at revision {after}" + (f" (was {before})" if before != after
                                                       else " (already current)"))


@main.command()
@warehouse_option
@click.option("--limit", type=int, default=20, show_default=True, help="How many runs.")
@json_option
def runs(warehouse: str | None, limit: int, as_json: bool) -> None:
    """List recent runs, newest first.

    Example: loader runs --limit 5
    """
    found = commands.runs(warehouse, limit)
    if as_json:
        click.echo(json.dumps(found, default=str))
        return
    table = Table("run", "flow", "mode", "status", "started", "seconds", "error")
    for run_ in found:
        seconds = ((run_["ended_at"] - run_["started_at"]).total_seconds()
                   if run_["ended_at"] else None)
        table.add_row(str(run_["run_id"]), run_["flow"], run_["mode"], run_["status"],
                      str(run_["started_at"])[:19],
                      f"{seconds:.1f}" if seconds is not None else "",
                      (run_["error"] or "")[:60])
    console.print(table)


@main.command()
@click.argument("run_id", type=int)
@warehouse_option
@json_option
def show(run_id: int, warehouse: str | None, as_json: bool) -> None:
    """Show one run as a table of its tasks.

    Example: loader show 3
    """
    found, task_runs = commands.show(run_id, warehouse)
    if as_json:
        click.echo(json.dumps({"run": found, "tasks": task_runs}, default=str))
        return
    console.print(f"run {run_id}: {found['flow']} ({found['mode']}) {found['status']}"
                  f"  params {found['params']}")
    if found["error"]:
        console.print(f"[red]error:[/] {found['error']}", highlight=False)
    table = Table("task", "status", "worker", "seconds", "read", "ins", "upd", "del", "rej",
                  "changes")
    for task in task_runs:
        changed = ", ".join(f"{k} {v}" for k, v in task["changes"].items())
        table.add_row(task["task"], task["status"], task["worker"] or "",
                      f"{task['seconds']:.2f}" if task["seconds"] is not None else "",
                      *(str(task[k]) for k in ("rows_read", "inserted", "updated", "deleted",
                                                "rejected")), changed[:80])
    console.print(table)


@main.command()
@click.argument("table")
@click.option("--since", required=True, metavar="RUN_ID|ISO_TIMESTAMP",
              help="Changes by this run or later, or at or after this time.")
@click.option("--column", "columns", multiple=True, help="Only this column; repeatable.")
@click.option("--limit", type=int, default=None, help="At most this many cells.")
@warehouse_option
@json_option
def changes(table: str, since: str, columns: Sequence[str], limit: int | None,
            warehouse: str | None, as_json: bool) -> None:
    """The cells of TABLE that changed since a run or a time: key, column, changed_at.

    Example: loader changes sales --since 2 --column amount_aud
    """
    found = commands.changes(table, since, warehouse, columns, limit)
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in found], default=str))
        return
    out = Table("key", "column", "changed_at")
    for change in found:
        out.add_row(", ".join(f"{k}={v}" for k, v in change.key.items()), change.column,
                    str(change.changed_at))
    console.print(out)
    console.print(f"{len(found)} changed cell(s)")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                "help_option_names": []})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: Sequence[str]) -> None:
    """Start a Celery worker for the loader's tasks (any celery worker options pass through).

    Example: loader worker --concurrency 2 -n etl1@%h  (with LOADER_BROKER_URL set)
    """
    if not os.environ.get("LOADER_BROKER_URL"):
        raise ConfigError("set LOADER_BROKER_URL (e.g. redis://localhost:6379/0) before "
                          "starting a worker; without a broker loader run works in-process")
    from loader.celery_app import app

    app.worker_main(["worker", "--loglevel", "INFO", *celery_args])


@main.command()
@click.option("--dir", "directory", default="./demo", show_default=True, metavar="DIR",
              help="The demo directory (data and warehouse); a rerun starts it afresh.")
@click.option("--rows", type=click.IntRange(min=200), default=20_000, show_default=True,
              help="How many sales rows to generate.")
@click.option("--warehouse", "warehouse", metavar="URL", default=None,
              help="Warehouse URL (default: sqlite:///DIR/warehouse.db).")
def demo(directory: str, rows: int, warehouse: str | None) -> None:
    """Generate sales data, run sales.nightly, change the sources, run sales.refresh,
    and tell what the refresh did. Needs no services.

    Example: loader demo --dir ./demo --rows 20000
    """
    from pathlib import Path

    from loader import demo as demos

    with console.status("starting the demo") as status:
        outcome = demos.run_demo(Path(directory), rows, warehouse,
                                 progress=lambda message: status.update(message))
    for line in demos.story(outcome):
        console.print(line, highlight=False)


@main.command()
@click.argument("run_id", type=int)
@click.option("-o", "--output", "output", required=True, metavar="FILE.html",
              help="Where to write the HTML page.")
@warehouse_option
def report(run_id: int, output: str, warehouse: str | None) -> None:
    """Write one run as a self-contained HTML page: its task timeline and the cells it changed.

    Example: loader report 2 -o run.html
    """
    from loader.report import write_report

    path = write_report(run_id, output, warehouse)
    console.print(f"wrote {path} (run {run_id})", highlight=False)
