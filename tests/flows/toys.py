"""Toy processors for the flow tests: tiny, declarative, and writing real rows.

This file has no test of its own and imports nothing from the tests, so a test
can copy it into a temporary flows directory as ``_toys.py`` (flow modules
there ``import _toys``; ``import_flows`` skips names starting with ``_``) and
the same processors run in ``loader run`` and ``loader worker`` subprocesses.

Processor names are global (they name Celery tasks), so each test module
gives its toys its own prefix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import sqlalchemy as sa

from loader.processors.base import Context, Result

LOG = "toy_log"


@dataclass(frozen=True)
class Mark:
    """Append one row ``(task, run_id, pid)`` to ``toy_log`` in one transaction.

    ``nap`` sleeps before the transaction; ``hold`` sleeps inside it, after the
    row was written and before the commit; ``fail`` raises a RuntimeError with
    that text after the row was written (so a rollback must remove it).
    """

    name: str
    reads: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    version: str = "1"
    nap: float = 0.0
    hold: float = 0.0
    fail: str | None = None

    def run(self, ctx: Context) -> Result:
        if self.nap:
            time.sleep(self.nap)
        with ctx.warehouse.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {LOG} "
                                 "(task TEXT NOT NULL, run_id INTEGER NOT NULL, pid INTEGER)")
            conn.execute(sa.text(f"INSERT INTO {LOG} (task, run_id, pid) VALUES (:t, :r, :p)"),
                         {"t": self.name, "r": ctx.run_id, "p": os.getpid()})
            if self.hold:
                time.sleep(self.hold)
            if self.fail:
                raise RuntimeError(self.fail)
        return Result(inserted=1)


@dataclass(frozen=True)
class Empty:
    """Do nothing but return a Result: what a task costs besides its work."""

    name: str
    reads: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    version: str = "1"

    def run(self, ctx: Context) -> Result:
        return Result()


def log_rows(conn: sa.Connection) -> list[tuple[str, int]]:
    """The rows of ``toy_log`` as (task, run_id), ordered by run and task."""
    return [(t, r) for t, r in conn.exec_driver_sql(
        f"SELECT task, run_id FROM {LOG} ORDER BY run_id, task")]
