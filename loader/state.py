"""Run clocks and watermarks: what each processor has consumed so far.

A run's timestamp comes from the warehouse's clock and is strictly greater
than every earlier run's, so "stamped after my watermark" means "written by a
run I have not consumed". A processor moves its watermarks in the same
transaction as its output, so a crash loses nothing and a retry redoes
exactly the unconsumed delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import meta
from loader.warehouse import TICK, db_now


def next_run_ts(conn: Connection) -> datetime:
    """A timestamp from the warehouse clock, later than every earlier run's."""
    now = db_now(conn)
    last = conn.execute(sa.select(sa.func.max(meta.runs.c.run_ts))).scalar()
    if isinstance(last, str):
        last = datetime.fromisoformat(last)
    if last is not None and now <= last:
        now = last + TICK
    return now


@dataclass(frozen=True)
class Watermark:
    """Where a processor stands on one input: consumed up to ``at``, by ``version``."""

    at: datetime | None
    version: str

    def applies(self, version: str) -> bool:
        """True when the watermark was set by this version of the processor."""
        return self.at is not None and self.version == version


def get_watermark(conn: Connection, processor: str, input_: str) -> Watermark:
    w = meta.watermarks
    row = conn.execute(
        sa.select(w.c.watermark, w.c.version)
        .where(w.c.processor == processor, w.c.input == input_)
    ).first()
    return Watermark(row.watermark, row.version) if row else Watermark(None, "")


def set_watermark(conn: Connection, processor: str, input_: str, at: datetime,
                  version: str) -> None:
    w = meta.watermarks
    updated = conn.execute(
        w.update().where(w.c.processor == processor, w.c.input == input_)
        .values(watermark=at, version=version)
    ).rowcount
    if not updated:
        conn.execute(w.insert().values(processor=processor, input=input_, watermark=at,
                                       version=version))


def consume_from(conn: Connection, processor: str, inputs: Sequence[str], version: str,
                 full: bool) -> tuple[datetime | None, dict[str, str | None]]:
    """Where ``processor`` resumes on ``inputs``: the moment after which it must look
    (None: at everything, for a full run, a first run or a new version) and its
    watermarks as text, for the history."""
    marks = {i: get_watermark(conn, processor, i) for i in inputs}
    before = {i: stamp_text(w.at) for i, w in marks.items()}
    if full or not all(w.applies(version) for w in marks.values()):
        return None, before
    return min(w.at for w in marks.values() if w.at is not None), before


def consumed(conn: Connection, processor: str, inputs: Sequence[str], at: datetime,
             version: str) -> dict[str, str | None]:
    """Move ``processor``'s watermarks on ``inputs`` to ``at``; returns them as text."""
    for input_ in inputs:
        set_watermark(conn, processor, input_, at, version)
    return {i: stamp_text(at) for i in inputs}


def stamp_text(value: datetime | None) -> str | None:
    """A run timestamp as history records it."""
    return value.isoformat(sep=" ") if value is not None else None
