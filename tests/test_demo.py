"""Tests of ``loader demo``: a small demo run end to end, as a function and on the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loader import commands
from loader import demo as demos
from loader import flow as flows
from loader.cli import main
from loader.processors.aggregate import Aggregate
from loader.processors.derive import Derive

ROWS = 800


def _derived_task_names() -> set[str]:
    """The refresh flow's Derive and Aggregate tasks, read from the flow itself."""
    flow = flows.load("sales.refresh")
    return {p.name for p in flow.processors if isinstance(p, Derive | Aggregate)}


def _cells(tasks: list[dict[str, Any]], names: set[str] | None = None) -> dict[str, int]:
    """``table.column`` -> cells changed, summed from the task history."""
    found: dict[str, int] = {}
    for task in tasks:
        if names is None or task["task"] in names:
            for key, n in task["changes"].items():
                found[key] = found.get(key, 0) + n
    return found


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> demos.Demo:
    return demos.run_demo(tmp_path_factory.mktemp("demo") / "demo", rows=ROWS)


def test_demo_runs_nightly_then_refresh(finished: demos.Demo) -> None:
    """The demo succeeds and leaves exactly two runs: a full nightly, then a refresh."""
    assert finished.nightly.ok and finished.refresh.ok
    runs = commands.runs(finished.warehouse)
    assert [(r["run_id"], r["flow"], r["mode"], r["status"]) for r in reversed(runs)] == [
        (finished.nightly.run_id, "sales.nightly", "full", "succeeded"),
        (finished.refresh.run_id, "sales.refresh", "refresh", "succeeded"),
    ]
    assert finished.warehouse == f"sqlite:///{finished.directory / 'warehouse.db'}"
    assert sorted(p.name for p in finished.data_dir.iterdir()) == [
        "sales_east.csv", "sales_north.csv", "sales_south.csv", "sales_west.csv", "shop.db"]


def test_story_names_the_rederived_columns_from_history(finished: demos.Demo) -> None:
    """Every column the refresh's Derive/Aggregate tasks changed, per the warehouse's task
    history, appears in the story on its table's line with its count."""
    _, tasks = commands.show(finished.refresh.run_id, finished.warehouse)
    derived = {k: n for k, n in _cells(tasks, _derived_task_names()).items() if n}
    assert derived, "the demo's changes should make the refresh re-derive something"
    text = demos.plain(demos.story(finished))
    block = text[text.index("re-derived"):text.index("4. open exceptions")]
    lines = block.splitlines()
    for key, n in derived.items():
        table, column = key.split(".", 1)
        line = next(line for line in lines if f" {table} " in f" {line} ")
        assert f"{column} {n:,}" in line, (key, line)


def test_story_reports_groups_times_and_commands(finished: demos.Demo) -> None:
    """The story gives the groups each aggregate rebuilt, both run times with the refresh's
    share, the exceptions and rejects counts, and commands with the warehouse and ids."""
    text = demos.plain(demos.story(finished))
    _, tasks = commands.show(finished.refresh.run_id, finished.warehouse)
    for task in tasks:
        if "groups_rebuilt" in task["details"]:
            assert f"({task['details']['groups_rebuilt']:,} of " in text
    n, r = finished.nightly, finished.refresh
    assert f"succeeded in {n.seconds:.1f}s" in text
    assert f"in {r.seconds:.1f}s, {r.seconds / n.seconds:.0%} of the nightly" in text
    assert f"rejects {finished.rejects:,}" in text and finished.rejects > 0
    assert "open exceptions" in text and "new column promo_code in sales_south.csv" in text
    url = finished.warehouse
    for command in (f"loader runs --warehouse {url}", f"loader show {r.run_id} --warehouse {url}",
                    f"loader changes sales --since {r.run_id} --warehouse {url}",
                    f"loader report {r.run_id} -o run.html --warehouse {url}"):
        assert command in text


def test_refresh_changes_fewer_cells_than_nightly(finished: demos.Demo) -> None:
    """The refresh changes far fewer cells than the nightly wrote, per the task history."""
    _, nightly = commands.show(finished.nightly.run_id, finished.warehouse)
    _, refresh = commands.show(finished.refresh.run_id, finished.warehouse)
    before, after = sum(_cells(nightly).values()), sum(_cells(refresh).values())
    assert 0 < after < before
    assert demos.cells_changed(refresh) < demos.cells_changed(nightly)


def test_cli_demo_prints_the_story_and_reruns_from_scratch(tmp_path: Path) -> None:
    """``loader demo`` prints the story; a rerun in the same directory removes only the files
    the demo made and starts again at run 1."""
    directory = tmp_path / "d"
    args = ["demo", "--dir", str(directory), "--rows", "600"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "1. nightly  run 1 (sales.nightly, full) succeeded" in first.output
    assert "re-derived" in first.output
    assert f"loader report 2 -o run.html --warehouse sqlite:///{directory}/warehouse.db" \
        in first.output
    (directory / "notes.txt").write_text("mine", encoding="utf-8")
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    assert (directory / "notes.txt").read_text(encoding="utf-8") == "mine"
    runs = commands.runs(f"sqlite:///{directory}/warehouse.db")
    assert [r["run_id"] for r in runs] == [2, 1]
    assert json.loads((directory / demos.MARKER).read_text())["files"][-1] == "warehouse.db"


def test_cli_demo_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    """A non-empty directory without the demo's marker is refused with a usage error and
    left untouched."""
    (tmp_path / "precious.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path), "--rows", "600"])
    assert result.exit_code == 2
    assert "does not look like a loader demo directory" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.csv"]


def test_rerun_refuses_foreign_data_files_before_removing_anything(tmp_path: Path) -> None:
    """In a demo directory whose data folder holds a file the demo did not make, a rerun is
    refused and removes nothing, not even the demo's own files."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "sales_north.csv").write_text("old demo file\n", encoding="utf-8")
    (data / "sales_mine.csv").write_text("txn_id\n", encoding="utf-8")
    (tmp_path / demos.MARKER).write_text(json.dumps({"files": ["data/sales_north.csv"]}),
                                         encoding="utf-8")
    result = CliRunner().invoke(main, ["demo", "--dir", str(tmp_path), "--rows", "600"])
    assert result.exit_code == 2
    assert "holds files the demo did not make (sales_mine.csv)" in result.output
    assert sorted(p.name for p in data.iterdir()) == ["sales_mine.csv", "sales_north.csv"]
