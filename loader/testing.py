"""Helpers for flow authors' own tests.

    from loader.testing import assert_flow_valid, run_in_temp_warehouse

    def test_my_flow_is_wired():
        assert_flow_valid("myflows.nightly")

    def test_my_flow_runs(tmp_path):
        wh, report = run_in_temp_warehouse("myflows.nightly", tmp_path,
                                           params={"data_dir": "tests/data"})
        assert report.ok, report.error
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from loader import flow as flows
from loader.flow import Flow
from loader.processors.base import Mode
from loader.runner import RunReport, run_flow
from loader.warehouse import Warehouse


def assert_flow_valid(flow: Flow | str) -> None:
    """Fail with every read that no earlier task provides (and the task reading it)."""
    loaded = flows.load(flow) if isinstance(flow, str) else flow
    found = flows.problems(loaded)
    assert not found, "flow is not valid:\n- " + "\n- ".join(found)


def run_in_temp_warehouse(flow: Flow | str, directory: Path, *,
                          params: Mapping[str, str] | None = None,
                          mode: Mode | None = None) -> tuple[Warehouse, RunReport]:
    """Run a flow in-process against a new SQLite warehouse in ``directory``."""
    loaded = flows.load(flow) if isinstance(flow, str) else flow
    wh = Warehouse(f"sqlite:///{Path(directory) / 'warehouse.db'}")
    return wh, run_flow(wh, loaded, params=params, mode=mode)
