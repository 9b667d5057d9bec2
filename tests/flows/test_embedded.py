"""The in-process worker is started once per process and reused by later runs."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import chain

from loader import Warehouse, celery_app
from loader.flow import Flow, step
from loader.processors.base import Context, Result
from loader.runner import run_flow

from .toys import Mark, log_rows


def test_a_flow_registered_after_the_worker_started_runs(tmp_path: Path) -> None:
    """A process runs one flow (starting the in-process worker), then loads another
    whose tasks did not exist when the worker started: the second flow runs too."""
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    try:
        first = Flow(chain(step(Mark("emb_before", provides=("emb.a",)))), mode="full",
                     name="emb.first")
        assert run_flow(wh, first, poll=0.02).ok
        later = Mark("emb_later_registered", provides=("emb.b",))
        second = Flow(chain(step(later)), mode="full", name="emb.second")
        report = run_flow(wh, second, poll=0.02)
        assert report.ok, report.error
        with wh.engine.connect() as conn:
            assert ("emb_later_registered", report.run_id) in log_rows(conn)
    finally:
        wh.dispose()


def test_the_in_process_broker_is_polled_often_and_a_broker_elsewhere_gently(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The memory broker's queue is looked at every EMBEDDED_POLLING seconds (the next
    stage's message waits no longer); a configured broker keeps BROKER_POLLING; either
    yields to LOADER_POLLING_INTERVAL."""
    def polling() -> float:
        return float(celery_app.settings()["broker_transport_options"]["polling_interval"])

    monkeypatch.delenv("LOADER_POLLING_INTERVAL", raising=False)
    monkeypatch.delenv("LOADER_BROKER_URL", raising=False)
    assert polling() == celery_app.EMBEDDED_POLLING < celery_app.BROKER_POLLING
    monkeypatch.setenv("LOADER_BROKER_URL", "redis://127.0.0.1:6379/13")
    assert polling() == celery_app.BROKER_POLLING
    monkeypatch.setenv("LOADER_POLLING_INTERVAL", "0.3")
    assert polling() == 0.3
    monkeypatch.delenv("LOADER_BROKER_URL")
    assert polling() == 0.3


def test_the_watcher_wakes_when_an_in_process_task_ends(tmp_path: Path) -> None:
    """In-process, a run ends when its last task does, not at the watcher's next look:
    with a 30 s poll, a one-task flow returns long before 30 s."""
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    try:
        flow = Flow(chain(step(Mark("emb_wakes", provides=("emb.w",)))), mode="full",
                    name="emb.wakes")
        report = run_flow(wh, flow, poll=30)
        assert report.ok, report.error
        assert report.seconds < 10
    finally:
        wh.dispose()


@dataclass
class FreezeSeen:
    """Records how many objects the garbage collector leaves out while it runs."""

    name: str
    seen: list[int]
    reads: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    version: str = "1"

    def run(self, ctx: Context) -> Result:
        self.seen.append(gc.get_freeze_count())
        return Result()


def test_a_run_leaves_older_objects_out_of_collections_until_it_ends(tmp_path: Path) -> None:
    """While the tasks run, what existed before them is frozen for the cyclic collector;
    afterwards nothing is, so it is collected as before."""
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    seen: list[int] = []
    try:
        assert gc.get_freeze_count() == 0
        flow = Flow(chain(step(FreezeSeen("emb_freeze", seen, provides=("emb.f",)))),
                    mode="full", name="emb.freeze")
        report = run_flow(wh, flow, poll=0.02)
        assert report.ok, report.error
        assert len(seen) == 1 and seen[0] > 1000
        assert gc.get_freeze_count() == 0
    finally:
        wh.dispose()
