"""One active run per warehouse: a lease held in the ``loader_locks`` table.

The holder renews its lease with a heartbeat; a lease whose holder stopped
renewing expires and is taken over. The same table works on every dialect,
and the database's own clock decides expiry, so machines with skewed clocks
agree.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import meta
from loader.errors import LockHeld
from loader.warehouse import Warehouse, db_now

NAME = "warehouse"


def default_ttl() -> float:
    return float(os.environ.get("LOADER_LOCK_TTL", "300"))


def abandon(conn: Connection, run_id: int, holder: str) -> None:
    """Mark a run whose lock expired (its holder stopped) as failed, with its open tasks."""
    r, t = meta.runs, meta.task_runs
    now = db_now(conn)
    conn.execute(r.update().where(r.c.run_id == run_id, r.c.status == "running").values(
        status="failed", ended_at=now,
        error=f"abandoned: its holder {holder} stopped renewing the warehouse lock"))
    conn.execute(t.update().where(t.c.run_id == run_id, t.c.status == "running").values(
        status="lost", ended_at=now, error="the run was abandoned"))


def holds(conn: Connection, run_id: int, name: str = NAME) -> bool:
    """True while run ``run_id`` holds the warehouse lock and its lease has not expired."""
    locks = meta.locks
    row = conn.execute(sa.select(locks.c.run_id, locks.c.expires_at)
                       .where(locks.c.name == name)).first()
    return row is not None and row.run_id == run_id and row.expires_at >= db_now(conn)


class Lease:
    """The warehouse lock, held by this process until released."""

    def __init__(self, wh: Warehouse, *, ttl: float | None = None, name: str = NAME) -> None:
        self.wh = wh
        self.name = name
        self.ttl = ttl if ttl is not None else default_ttl()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def acquire(self, wait: float = 0.0, run_id: int | None = None) -> None:
        """Take the lock, waiting up to ``wait`` seconds; raises LockHeld."""
        started = time.monotonic()
        while True:
            holder = self._try(run_id)
            if holder is None:
                break
            waited = time.monotonic() - started
            if waited >= wait:
                raise LockHeld(holder[0], holder[1], waited)
            time.sleep(min(0.5, max(wait - waited, 0.05)))
        self._beat = threading.Thread(target=self._heartbeat, name="loader-lease", daemon=True)
        self._beat.start()

    def _try(self, run_id: int | None) -> tuple[str, int | None] | None:
        """Take the lock if free or expired; else return its holder and run."""
        locks = meta.locks
        try:
            with self.wh.begin() as conn:
                now = db_now(conn)
                row = conn.execute(sa.select(locks).where(locks.c.name == self.name)).first()
                expires = now + timedelta(seconds=self.ttl)
                values = {"holder": self.holder, "run_id": run_id, "acquired_at": now,
                          "heartbeat_at": now, "expires_at": expires}
                if row is None:
                    conn.execute(locks.insert().values(name=self.name, **values))
                    return None
                taken = conn.execute(locks.update().where(
                    locks.c.name == self.name, locks.c.expires_at < now).values(**values))
                if taken.rowcount:
                    if row.run_id is not None:
                        abandon(conn, row.run_id, row.holder)
                    return None
                return row.holder, row.run_id
        except sa.exc.IntegrityError:
            return ("another process", None)

    def attach(self, run_id: int) -> None:
        """Name the run that holds the lock, for whoever waits on it."""
        with self.wh.begin() as conn:
            conn.execute(meta.locks.update().where(
                meta.locks.c.name == self.name, meta.locks.c.holder == self.holder)
                .values(run_id=run_id))

    def _heartbeat(self) -> None:
        interval = max(self.ttl / 5, 0.05)
        while not self._stop.wait(interval):
            try:
                with self.wh.begin() as conn:
                    now = db_now(conn)
                    conn.execute(meta.locks.update().where(
                        meta.locks.c.name == self.name, meta.locks.c.holder == self.holder)
                        .values(heartbeat_at=now,
                                expires_at=now + timedelta(seconds=self.ttl)))
            except sa.exc.OperationalError:
                continue

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with self.wh.begin() as conn:
            conn.execute(meta.locks.delete().where(
                meta.locks.c.name == self.name, meta.locks.c.holder == self.holder))
