"""Tests of ``loader report``: the HTML page of a real (small) run of the sales flow."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loader import commands
from loader import salesdata as sd
from loader.cli import main
from loader.report import changes_by_column, render, write_report

HOSTILE = "<script>alert('owned')</script> & \"quotes\""
ROW = re.compile(r'<tr class="change" data-column="([^"]+)">(.*?)</tr>', re.S)
NUM = re.compile(r'<td class="num">([\d,]+)</td>')


@dataclass
class Written:
    run: dict[str, Any]
    tasks: list[dict[str, Any]]
    path: Path
    html: str
    warehouse: str


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """A real sales.nightly run on a tiny data directory, and its report on disk."""
    base = tmp_path_factory.mktemp("report")
    sd.generate(base / "data", sd.Scale(sales=400, customers=40, products=20, days=10))
    warehouse = f"sqlite:///{base}/warehouse.db"
    ran = commands.run("sales.nightly", warehouse=warehouse,
                       params={"data_dir": str(base / "data")})
    assert ran.ok, ran.error
    run, tasks = commands.show(ran.run_id, warehouse)
    path = write_report(ran.run_id, base / "out" / "run.html", warehouse)
    return Written(run, tasks, path, path.read_text(encoding="utf-8"), warehouse)


def test_one_bar_per_task_with_its_name(written: Written) -> None:
    """The timeline has exactly one bar per task run, each in a group labelled by its task."""
    html = written.html
    assert len(written.tasks) == 9
    assert html.count('<rect class="bar"') == len(written.tasks)
    groups = re.findall(r'<g class="task" data-task="([^"]+)"><title>[^<]*</title>'
                        r'<text[^>]*>([^<]+)</text><rect class="bar"', html)
    assert sorted(name for name, _ in groups) == sorted(t["task"] for t in written.tasks)
    assert all(name == label for name, label in groups)
    worker = written.tasks[0]["worker"]
    assert f"worker {worker} " in html


def test_header_shows_flow_mode_status_and_duration(written: Written) -> None:
    """The header names the flow, mode and status and gives the run's duration."""
    run = written.run
    seconds = (run["ended_at"] - run["started_at"]).total_seconds()
    assert f"<h1>sales.nightly <span class=\"id\">run {run['run_id']}</span></h1>" in written.html
    assert "<dt>mode</dt><dd>full</dd>" in written.html
    assert '<span class="badge ok">succeeded</span>' in written.html
    assert f"<dt>duration</dt><dd>{seconds:.2f}s</dd>" in written.html
    assert 'class="error"' not in written.html


def test_changes_table_matches_the_history(written: Written) -> None:
    """Each table.column of the changes table shows the cells the task history records,
    summed over tasks, and no other column appears."""
    expected: dict[str, int] = {}
    for task in written.tasks:
        for key, n in task["changes"].items():
            expected[key] = expected.get(key, 0) + n
    shown = {key: int(NUM.findall(body)[0].replace(",", ""))
             for key, body in ROW.findall(written.html)}
    assert shown == expected
    assert expected["sales.amount_aud"] > 0 and expected["daily_sales.revenue_aud"] > 0
    assert changes_by_column(written.tasks)["sales"][0][1] == max(
        n for key, n in expected.items() if key.startswith("sales."))


def test_per_task_counts(written: Written) -> None:
    """The tasks table gives each task's rows read, inserted, updated, deleted and rejected."""
    files = next(t for t in written.tasks if t["task"] == "sales_files")
    row = re.search(r"<tr><td><code>sales_files</code></td>.*?</tr>", written.html, re.S)
    assert row is not None
    numbers = [int(n.replace(",", "")) for n in NUM.findall(row.group(0))]
    assert numbers == [files[k] for k in ("rows_read", "inserted", "updated", "deleted",
                                          "rejected")]
    assert files["rejected"] > 0


def test_hostile_text_is_escaped(written: Written) -> None:
    """A task error, run error and task name holding markup appear escaped, never as tags."""
    run, tasks = copy.deepcopy(written.run), copy.deepcopy(written.tasks)
    run.update(status="failed", error=f"task 'sales_derived' failed: {HOSTILE}")
    tasks[0].update(status="failed", error=HOSTILE)
    tasks[1]["task"] = "<b>bold</b>"
    html = render(run, tasks)
    assert "<script" not in html.lower()
    assert "<b>" not in html
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" \
        in html
    assert 'data-task="&lt;b&gt;bold&lt;/b&gt;"' in html
    assert '<span class="badge bad">failed</span>' in html


def test_page_is_self_contained(written: Written) -> None:
    """The page loads nothing: no src or href, no stylesheet links, no scripts, no
    http(s) URLs in CSS; its styles and chart are inline."""
    html = written.html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"\b(?:src|href)\s*=", html, re.I)
    assert "<link" not in html and "<script" not in html and "@import" not in html
    assert not re.search(r"url\(\s*['\"]?https?:", html)
    assert "<style>" in html and "<svg " in html


def test_cli_report_writes_the_page_and_rejects_unknown_runs(written: Written,
                                                             tmp_path: Path) -> None:
    """``loader report`` writes the same page; an unknown run id is a usage error."""
    out = tmp_path / "r.html"
    ok = CliRunner().invoke(main, ["report", str(written.run["run_id"]), "-o", str(out),
                                   "--warehouse", written.warehouse])
    assert ok.exit_code == 0, ok.output
    assert out.read_text(encoding="utf-8").count('<rect class="bar"') == len(written.tasks)
    missing = CliRunner().invoke(main, ["report", "999", "-o", str(tmp_path / "x.html"),
                                        "--warehouse", written.warehouse])
    assert missing.exit_code == 2
    assert "no run 999" in missing.output
    assert not (tmp_path / "x.html").exists()
