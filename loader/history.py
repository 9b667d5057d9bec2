"""Every run and every task run, recorded in the warehouse.

A run row holds the flow, mode, parameters, timings, status and error; a
task-run row holds what one processor did (counts, changes per column,
watermarks before and after) and where it ran. Everything written here has
had URL passwords masked.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import meta
from loader.processors.base import Result
from loader.state import next_run_ts
from loader.warehouse import Warehouse, db_now, mask_url


@dataclass(frozen=True)
class RunInfo:
    """A started run: its id and its timestamp."""

    run_id: int
    run_ts: datetime
    flow: str
    mode: str
    params: Mapping[str, str]


def _masked(params: Mapping[str, str]) -> str:
    return json.dumps({k: mask_url(str(v)) for k, v in params.items()}, sort_keys=True)


def start_run(conn: Connection, flow: str, mode: str, params: Mapping[str, str],
              only: Sequence[str] = ()) -> RunInfo:
    """Record a new run with the next run timestamp (the caller holds the lock)."""
    run_ts = next_run_ts(conn)
    run_id = conn.execute(meta.runs.insert().values(
        flow=flow, mode=mode, params=_masked(params), only_tasks=",".join(only) or None,
        run_ts=run_ts, started_at=db_now(conn), status="running", host=socket.gethostname(),
    ).returning(meta.runs.c.run_id)).scalar_one()
    return RunInfo(run_id, run_ts, flow, mode, dict(params))


def finish_run(conn: Connection, run_id: int, status: str, error: str | None = None) -> None:
    """Record the end of a run; task runs still marked running were lost (a killed worker)."""
    now = db_now(conn)
    conn.execute(meta.runs.update().where(meta.runs.c.run_id == run_id).values(
        status=status, error=mask_url(error) if error else None, ended_at=now))
    t = meta.task_runs
    conn.execute(t.update().where(t.c.run_id == run_id, t.c.status == "running").values(
        status="lost", ended_at=now, error="its worker stopped before it finished"))


def task_error(conn: Connection, run_id: int, task: str) -> str | None:
    """The error recorded for a failed task of a run (the latest attempt)."""
    t = meta.task_runs
    return conn.execute(sa.select(t.c.error).where(
        t.c.run_id == run_id, t.c.task == task, t.c.status == "failed")
        .order_by(t.c.id.desc()).limit(1)).scalar()


def set_task_ids(conn: Connection, run_id: int, task_ids: Mapping[str, str]) -> None:
    conn.execute(meta.runs.update().where(meta.runs.c.run_id == run_id)
                 .values(task_ids=json.dumps(dict(task_ids), sort_keys=True)))


def start_task(wh: Warehouse, run_id: int, task: str, celery_id: str | None,
               worker: str | None) -> int:
    with wh.begin() as conn:
        return int(conn.execute(meta.task_runs.insert().values(
            run_id=run_id, task=task, celery_id=celery_id,
            worker=worker or socket.gethostname(), status="running",
            started_at=db_now(conn),
        ).returning(meta.task_runs.c.id)).scalar_one())


def finish_task(wh: Warehouse, task_run_id: int, result: Result | None,
                error: str | None = None) -> None:
    values: dict[str, Any] = {"status": "failed" if error else "succeeded"}
    if result is not None:
        values.update(
            seconds=result.seconds, rows_read=result.rows_read, inserted=result.inserted,
            updated=result.updated, deleted=result.deleted, rejected=result.rejected,
            changes=json.dumps(result.changes, sort_keys=True),
            watermark_before=json.dumps(result.watermark_before, sort_keys=True),
            watermark_after=json.dumps(result.watermark_after, sort_keys=True),
            details=json.dumps(result.details, sort_keys=True, default=str),
        )
    if result is not None and result.errors and not error:
        values["error"] = mask_url("; ".join(result.errors))
    if error:
        values["error"] = mask_url(error)
    with wh.begin() as conn:
        conn.execute(meta.task_runs.update().where(meta.task_runs.c.id == task_run_id)
                     .values(ended_at=db_now(conn), **values))


def list_runs(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent runs, newest first."""
    r = meta.runs
    rows = conn.execute(sa.select(r).order_by(r.c.run_id.desc()).limit(limit)).mappings()
    return [dict(row) for row in rows]


def get_run(conn: Connection, run_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(meta.runs).where(meta.runs.c.run_id == run_id)).mappings().first()
    return dict(row) if row else None


def task_runs(conn: Connection, run_id: int) -> list[dict[str, Any]]:
    """The task runs of a run, in the order they started, JSON fields decoded."""
    t = meta.task_runs
    rows = conn.execute(sa.select(t).where(t.c.run_id == run_id).order_by(t.c.id)).mappings()
    decoded = []
    for row in rows:
        item = dict(row)
        for name in ("changes", "watermark_before", "watermark_after", "details"):
            item[name] = json.loads(item[name]) if item[name] else {}
        decoded.append(item)
    return decoded
