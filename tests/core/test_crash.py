"""A processor that fails half-way changes nothing, and the run records the failure.

Every processor writes its output, its stamps and its watermark in one
transaction; a fault in the middle rolls all of it back, the run and the task
are recorded as failed with the error text, and rerunning without the fault
converges to what a fresh full run shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import loader.bulk
from loader import Warehouse, meta, run_sequence
from loader.processors import aggregate, csv_extract, derive, sql_extract
from loader.processors.quality import Quality

from .shop import Shop, dump, flow, fresh_full_outputs, outputs, sample_shop

FAULT = "injected fault"
PAGE = 2


def fail_after(real: Callable[..., Any], calls: int = 1) -> Callable[..., Any]:
    """``real``, but raising after it has been called ``calls`` times."""
    done = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        result = real(*args, **kwargs)
        done += 1
        if done >= calls:
            raise RuntimeError(FAULT)
        return result

    return wrapper


def _change_every_source(shop: Shop) -> None:
    """Changes that give every processor something to write."""
    shop.orders["east"]["1"]["price"] = "9.99"
    shop.orders["west"]["2"]["cust"] = "c1"
    shop.put_order("west", "3", 2, "1.00", "c2")
    del shop.orders["east"]["3"]
    shop.write_orders("east")
    shop.write_orders("west")
    shop.put_customer("c2", "C")
    shop.put_customer("c4", "B")


def _compute_failing_on_third_row(processors: list[Any]) -> list[Any]:
    seen = 0
    real = processors[2].compute

    def compute(row: Mapping[str, Any]) -> Mapping[str, Any]:
        nonlocal seen
        seen += 1
        if seen == 3:
            raise RuntimeError(FAULT)
        return real(row)

    processors[2] = dataclasses.replace(processors[2], compute=compute)
    return processors


def _patch(target: Any, name: str) -> Callable[[pytest.MonkeyPatch, list[Any]], list[Any]]:
    def apply(monkeypatch: pytest.MonkeyPatch, processors: list[Any]) -> list[Any]:
        monkeypatch.setattr(target, name, fail_after(getattr(target, name)))
        return processors

    return apply


FAULTS = {
    "csv_upsert": ("orders_csv", _patch(csv_extract, "upsert")),
    "sql_upsert": ("customers_db", _patch(sql_extract, "upsert")),
    "derive_compute_third_row": (
        "order_values", lambda mp, processors: _compute_failing_on_third_row(processors)),
    "derive_second_bulk_load": ("order_values", _patch(loader.bulk, "load")),
    "derive_upsert": ("order_values", _patch(derive, "upsert")),
    "aggregate_upsert": ("by_seg", _patch(aggregate, "upsert")),
    "quality_write": ("order_checks", _patch(Quality, "_write")),
}


def _run_and_task_rows(wh: Warehouse, run_id: int) -> tuple[Any, list[Any]]:
    with wh.begin() as conn:
        run = conn.execute(sa.select(meta.runs).where(meta.runs.c.run_id == run_id)).one()
        tasks = conn.execute(sa.select(meta.task_runs).where(meta.task_runs.c.run_id == run_id)
                             .order_by(meta.task_runs.c.id)).all()
    return run, tasks


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_half_way_through_a_processor_changes_nothing(
        warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fault: str) -> None:
    """An exception in the middle of a processor's write leaves every tracked table,
    its stamps, the membership tables, ``exceptions``, the watermarks, the loaded
    sources, the rejects and the schema registry exactly as they were; the run is
    recorded as failed with the error text, the task as failed, the tasks after it do
    not run; a rerun without the fault converges to what a fresh full run shows."""
    failing, inject = FAULTS[fault]
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full", flow(PAGE)).status == "succeeded"
    _change_every_source(shop)
    processors = flow(PAGE)
    names = [p.name for p in processors]
    at = names.index(failing)
    if at:
        prefix = run_sequence(warehouse, processors[:at], params=shop.params)
        assert prefix.status == "succeeded", prefix.error
    before = dump(warehouse, meta=True)
    assert before["loader_watermarks"]

    with monkeypatch.context() as patched:
        faulty = inject(patched, processors)
        outcome = run_sequence(warehouse, faulty[at:], params=shop.params)
    assert outcome.status == "failed"
    assert outcome.error is not None and FAULT in outcome.error
    assert dump(warehouse, meta=True) == before

    run, tasks = _run_and_task_rows(warehouse, outcome.run_id)
    assert run.status == "failed" and FAULT in run.error and run.ended_at is not None
    assert [(t.task, t.status) for t in tasks] == [(failing, "failed")]
    assert FAULT in tasks[0].error

    again = shop.run(warehouse, "refresh", flow(PAGE))
    assert again.status == "succeeded", again.error
    assert outputs(warehouse) == fresh_full_outputs(shop, warehouse, tmp_path)


def test_a_database_error_is_reported_with_its_own_message(
        warehouse: Warehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When a statement fails inside a processor's transaction, the run's error names
    that statement's error (here: the missing table it queried), and nothing changed."""
    shop = sample_shop(tmp_path / "data")
    assert shop.run(warehouse, "full").status == "succeeded"
    _change_every_source(shop)
    prefix = run_sequence(warehouse, flow()[:2], params=shop.params)
    assert prefix.status == "succeeded", prefix.error
    before = dump(warehouse, meta=True)
    real = derive.upsert

    def broken(conn: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        counts = real(conn, *args, **kwargs)
        conn.exec_driver_sql("SELECT * FROM no_such_table_injected")
        return counts

    monkeypatch.setattr(derive, "upsert", broken)
    outcome = run_sequence(warehouse, flow()[2:], params=shop.params)
    assert outcome.status == "failed"
    assert dump(warehouse, meta=True) == before
    assert "no_such_table_injected" in (outcome.error or "")
