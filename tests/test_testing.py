"""The helpers flow authors use in their own tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery import chain

from loader import Derive, Flow, cols, step
from loader.salesdata import Scale, generate
from loader.testing import assert_flow_valid, run_in_temp_warehouse

backwards = Derive("testing_backwards", "testing_t", ("a",), cols("b"), lambda r: {"b": r["a"]})


def test_assert_flow_valid_names_the_task_and_the_missing_column() -> None:
    """A read nobody provides fails the assertion with the task and table.column."""
    flow = Flow(chain(step(backwards)))
    with pytest.raises(AssertionError, match=r"testing_backwards.*testing_t\.a"):
        assert_flow_valid(flow)


def test_assert_flow_valid_accepts_the_reference_flow() -> None:
    """The shipped sales flow is wired correctly."""
    assert_flow_valid("sales.nightly")


def test_run_in_temp_warehouse_runs_the_flow(tmp_path: Path) -> None:
    """The sales flow runs end to end in a fresh SQLite warehouse."""
    data = tmp_path / "data"
    generate(data, Scale.quick())
    wh, report = run_in_temp_warehouse("sales.nightly", tmp_path,
                                       params={"data_dir": str(data)})
    assert report.ok, report.error
    with wh.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT count(*) FROM sales").scalar_one()
    assert 0 < rows <= Scale.quick().sales
