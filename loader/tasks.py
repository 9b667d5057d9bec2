"""What a Celery task does, as plain functions the tests call too.

A task is a thin shell around :func:`execute`: find the warehouse, skip if
this task already succeeded in this run (a redelivered message), run the
processor with history, and return its counts (no timings, so what a chord
collects is deterministic).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from loader import meta
from loader.errors import ConfigError, LoaderError, TransientError
from loader.execute import describe, run_task
from loader.history import RunInfo
from loader.lock import holds
from loader.processors.base import Processor, Result
from loader.warehouse import Warehouse, db_now, mask_url

_warehouses: dict[str, Warehouse] = {}
_lock = threading.Lock()


def use_warehouse(wh: Warehouse) -> None:
    """Let tasks in this process use ``wh`` for runs against its URL."""
    with _lock:
        _warehouses[wh.masked_url] = wh


def warehouse_for(masked: str) -> Warehouse:
    """The warehouse a run writes to: one this process knows, or the configured one."""
    with _lock:
        if masked in _warehouses:
            return _warehouses[masked]
        wh = Warehouse(os.environ.get("LOADER_WAREHOUSE_URL"))
        if wh.masked_url != masked:
            raise ConfigError(
                f"this worker writes to {wh.masked_url} but the run is for {masked}: start "
                "the worker with the same LOADER_WAREHOUSE_URL as the run"
            )
        _warehouses[masked] = wh
        return wh


def run_info(run: dict[str, Any]) -> RunInfo:
    return RunInfo(run["run_id"], datetime.fromisoformat(run["run_ts"]), run["flow"],
                   run["mode"], run["params"])


def summary(name: str, result: Result) -> dict[str, Any]:
    """The deterministic part of a result: what a chord collects."""
    return {"task": name, "rows_read": result.rows_read, "inserted": result.inserted,
            "updated": result.updated, "deleted": result.deleted,
            "rejected": result.rejected, "changes": result.changes, "errors": result.errors}


def already_done(wh: Warehouse, run_id: int, task: str) -> dict[str, Any] | None:
    """The counts of this task if it already succeeded in this run."""
    t = meta.task_runs
    with wh.engine.connect() as conn:
        row = conn.execute(sa.select(t).where(t.c.run_id == run_id, t.c.task == task,
                                              t.c.status == "succeeded")).mappings().first()
    if row is None:
        return None
    return {"task": task, "rows_read": row["rows_read"], "inserted": row["inserted"],
            "updated": row["updated"], "deleted": row["deleted"],
            "rejected": row["rejected"], "changes": json.loads(row["changes"]),
            "deduplicated": True}


def execute(processor: Processor, run: dict[str, Any], *, celery_id: str | None,
            worker: str | None = None, report: Any = None) -> dict[str, Any]:
    """Run ``processor`` for ``run`` once; a redelivered task returns the first counts."""
    wh = warehouse_for(run["warehouse"])
    done = already_done(wh, run["run_id"], processor.name)
    if done is not None:
        return done
    with wh.engine.connect() as conn:
        if not holds(conn, run["run_id"]):
            raise LoaderError(f"run {run['run_id']} no longer holds the warehouse lock (its "
                              "watcher stopped or another run took the lock over); "
                              f"task {processor.name!r} was not started")
    last = [0.0]

    def progress(phase: str, count: int, total: int | None) -> None:
        now = time.monotonic()
        if report is not None and now - last[0] > 0.5:
            last[0] = now
            report({"phase": phase, "done": count, "total": total})

    try:
        result = run_task(wh, run_info(run), processor, celery_id=celery_id,
                          worker=worker or socket.gethostname(), progress=progress)
    except sa.exc.DBAPIError as exc:
        if transient(exc):
            # The transaction rolled back with the connection: safe to run again.
            raise TransientError(f"task {processor.name!r} lost its database connection: "
                                 f"{describe(exc)}") from exc
        raise
    return summary(processor.name, result)


def transient(exc: sa.exc.DBAPIError) -> bool:
    """A lost connection, a deadlock or serialization failure, or a busy SQLite file."""
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    if sqlstate[:2] in ("08", "40", "57"):
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


def mark_run_failed(masked: str, run_id: int, task: str, exc: BaseException) -> None:
    """Record a run as failed (when it is still marked running)."""
    wh = warehouse_for(masked)
    with wh.begin() as conn:
        r = meta.runs
        conn.execute(r.update().where(r.c.run_id == run_id, r.c.status == "running").values(
            status="failed", error=mask_url(f"task {task!r} failed: {describe(exc)}"),
            ended_at=db_now(conn)))
