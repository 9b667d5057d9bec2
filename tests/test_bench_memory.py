"""The memory-at-scale benchmark's arithmetic and report (its runs are ``make bench``'s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import memory_scale
from benchmarks.memory_scale import (
    PHASES,
    Peak,
    growth_per_million,
    parse_args,
    peak_ratio,
    report,
)
from benchmarks.sales_bench import PhaseFailed


def peak(rows: int, mib: float, phase: str = "noop", dialect: str = "sqlite") -> Peak:
    return Peak(dialect, rows, phase, 1.5, int(mib * 1024))


def test_growth_is_per_million_rows_from_the_smallest_scale_to_the_largest() -> None:
    found = [peak(3_000_000, 140), peak(1_000_000, 100), peak(2_000_000, 500)]
    assert growth_per_million(found) == pytest.approx(20.0)  # the middle scale plays no part
    assert growth_per_million([peak(200_000, 90), peak(1_200_000, 85)]) == pytest.approx(-5.0)
    assert growth_per_million([peak(1_000_000, 100)]) is None
    assert growth_per_million([peak(1_000_000, 100), peak(1_000_000, 120)]) is None
    assert peak_ratio(found) == pytest.approx(1.4)
    assert peak_ratio([peak(1_000_000, 100)]) is None


def test_the_report_has_a_row_per_phase_and_a_column_per_scale() -> None:
    peaks = [peak(200_000, 80, phase) for phase, _ in PHASES]
    peaks += [peak(1_000_000, 100, phase) for phase, _ in PHASES if phase != "noop"]
    text = report(peaks, [200_000, 1_000_000], ["sqlite"], "python -m x", {"code": "c"})
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == ("| phase | 200,000 rows | 1,000,000 rows | MiB more per million rows "
                       "| peak, largest ÷ smallest |")
    assert [r.split(" | ")[0][2:] for r in rows[1:]] == [label for _, label in PHASES]
    noop = rows[1 + [p for p, _ in PHASES].index("noop")]
    assert noop == "| refresh, nothing changed | 80 (1.50 s) | — | — | — |"
    assert rows[1].endswith("| 80 (1.50 s) | 100 (1.50 s) | 25.0 | 1.25 |")
    assert "From 200,000 to 1,000,000 rows is 5 times the rows." in text
    assert "## SQLite: peak RSS MiB (seconds)" in text and "## PostgreSQL" not in text


def test_bad_options_are_refused() -> None:
    assert parse_args(["--rows", "4000,2000,2000"]).rows == [2000, 4000]
    for bad in (["--rows", "2k"], ["--rows", "500"], ["--dialects", "mysql"], ["--rows", ","]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_a_failed_run_ends_the_series_with_what_was_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A phase that fails stops the series; the report keeps the scales measured before it
    and says what failed, and the exit status is 1."""
    calls: list[int] = []

    def run_scale(dialect: str, rows: int, *args: object) -> list[Peak]:
        calls.append(rows)
        if rows > 1_000:
            raise PhaseFailed(f"{dialect} {rows:,} noop: exit 1: boom")
        return [peak(rows, 90, phase) for phase, _ in PHASES]

    monkeypatch.setattr(memory_scale, "generate", lambda *args: None)
    monkeypatch.setattr(memory_scale, "run_scale", run_scale)
    with pytest.raises(SystemExit) as exit_:
        memory_scale.main(["--rows", "1000,2000,4000", "--dialects", "sqlite",
                           "--out", str(tmp_path)])
    assert exit_.value.code == 1
    assert calls == [1_000, 2_000]
    text = (tmp_path / "memory-sqlite.md").read_text()
    assert "| refresh, nothing changed | 90 (1.50 s) | — | — | — | — |" in text
    assert "A run failed" in text and "sqlite 2,000 noop: exit 1: boom" in text
