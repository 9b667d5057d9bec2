"""The sales benchmark's no-op refresh from the shell: `loader run` timed whole."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.sales_bench import Bench, Sample, loader_counts, run_from_shell
from benchmarks.sales_report import shell_note, timing_table
from loader.flow import load
from loader.runner import run_flow
from loader.salesdata import Scale, generate
from loader.warehouse import Warehouse


def _bench(tmp_path: Path) -> Bench:
    args = argparse.Namespace(timeout=600, dialects=["sqlite"])
    return Bench(args, Scale(sales=200, customers=20, products=5, days=5), tmp_path,
                 tmp_path / "pristine")


def test_the_shell_run_is_the_runner_plus_what_surrounds_it(tmp_path: Path) -> None:
    """After a nightly, `loader run sales.refresh` in a child process succeeds; its wall
    time from spawn to exit is longer than the runner's own seconds, which it keeps."""
    bench = _bench(tmp_path)
    data = tmp_path / "data"
    generate(data, bench.scale)
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    wh = Warehouse(url)
    try:
        assert run_flow(wh, load("sales.nightly"), params={"data_dir": str(data)}).ok
    finally:
        wh.dispose()
    base = Sample("sqlite", "baseline", 0, 2.0, counts=loader_counts(url))
    sample = run_from_shell(bench, "sqlite", 0, data, url, base, None)
    assert bench.samples == [sample]
    assert sample.counts == base.counts and not bench.mismatches
    assert sample.phase == "noop_shell" and sample.baseline == 2.0
    assert 0 < sample.steps["runner"] < sample.seconds
    assert sample.rss_kb and sample.rss_kb > 10_000


def test_the_report_gives_the_shell_row_and_the_time_outside_the_runner(
        tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    bench.samples = [
        Sample("sqlite", "noop_shell", 0, 1.30, 20.0, 90 * 1024, steps={"runner": 0.50}),
        Sample("sqlite", "noop_shell", 1, 1.10, 25.0, 95 * 1024, steps={"runner": 0.45}),
        Sample("postgresql", "noop_shell", 0, 9.0, 20.0, steps={"runner": 8.0}),
    ]
    rows = [line for line in timing_table(bench, "sqlite") if "from the shell" in line]
    assert rows == ["| refresh, nothing changed, from the shell (`loader run` start to exit) "
                    "| 2 | 1.20 | 1.10 | 1.30 | 0.05 (0.04-0.07) | 95 |"]
    note = " ".join(shell_note(bench, "sqlite"))
    assert "a median 1.20 s" in note
    assert "the runner's own 0.475 s: 0.725 s went to" in note
    assert shell_note(_bench(tmp_path), "sqlite") == []
