"""SQL-source extract: copy a table of any SQLAlchemy database into a tracked table.

A refresh reads only the rows whose cursor column (``updated_at``) is at or
after the last high-water mark less a lookback window, which catches rows
committed late with an earlier cursor value; a full run reads every row and
soft-deletes the keys that are gone from the source. Rows stream from the
source straight into the warehouse's bulk stage.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loader import bulk
from loader.coltypes import sql_type, to_decimal
from loader.errors import SourceError
from loader.merge import delete_missing, upsert
from loader.processors.base import Context, Result
from loader.sources.csvfile import parse_timestamp
from loader.state import get_watermark, set_watermark, stamp_text
from loader.tracking import Col, TrackedTable, ensure_table
from loader.warehouse import mask_url, postgresql_engine

Transform = Callable[[Any], Any]
BATCH = 10_000


@dataclass
class SqlExtract:
    """Extract ``source_table`` from the database at parameter ``url_param``.

    ``url_default`` is a template filled from the flow's parameters, used
    when the parameter is not given (e.g. ``sqlite:///{data_dir}/shop.db``).
    ``transforms`` map a column to a function applied to each value.
    """

    name: str
    table: str
    source_table: str
    key: tuple[Col, ...]
    columns: tuple[Col, ...]
    cursor: str = "updated_at"
    lookback: timedelta = timedelta(hours=1)
    url_param: str = "source_url"
    url_default: str | None = None
    transforms: Mapping[str, Transform] = field(default_factory=dict)
    version: str = "1"

    @property
    def reads(self) -> tuple[str, ...]:
        return ()

    @property
    def provides(self) -> tuple[str, ...]:
        return tuple(f"{self.table}.{c.name}" for c in (*self.key, *self.columns))

    def url(self, ctx: Context) -> str:
        default = self.url_default.format(**ctx.params) if self.url_default else None
        return ctx.param(self.url_param, default)

    def run(self, ctx: Context) -> Result:
        result = Result()
        url = self.url(ctx)
        engine = _source_engine(url, self.name)
        try:
            with ctx.warehouse.begin() as conn:
                table = ensure_table(conn, TrackedTable(self.table, self.key, self.columns),
                                     run_id=ctx.run_id, now=ctx.run_ts)
                mark = get_watermark(conn, self.name, "source")
                full = ctx.full or not mark.applies(self.version)
                since = None if full or mark.at is None else mark.at - self.lookback
                result.watermark_before = {"source": stamp_text(mark.at)}
                result.details["read"] = ("all rows" if since is None
                                          else f"{self.cursor} >= {since}")
                names = [c.name for c in (*self.key, *self.columns)]
                types = [(c.name, sql_type(c.type)) for c in (*self.key, *self.columns)]
                high = mark.at
                with bulk.stage(conn, f"{self.name}_rows", types,
                                key=[c.name for c in self.key]) as staged:
                    with bulk.writer(conn, staged) as put:
                        for row in self._unique(self._read(engine, url, since)):
                            put([row[n] for n in names])
                            result.rows_read += 1
                            moved = row.get(self.cursor)
                            if isinstance(moved, datetime) and (high is None or moved > high):
                                high = moved
                    columns = [c.name for c in self.columns]
                    counts = upsert(conn, table, staged, columns, ctx.run_ts)
                    if since is None:
                        counts.deleted = delete_missing(conn, table, staged, ctx.run_ts)
                result.inserted, result.updated, result.deleted = (
                    counts.inserted, counts.updated, counts.deleted)
                result.count_changes(table.name, counts.changes)
                if high is not None:
                    set_watermark(conn, self.name, "source", high, self.version)
                result.watermark_after = {"source": stamp_text(high)}
        finally:
            engine.dispose()
        return result

    def _unique(self, rows: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """One row per key: a key transform (upper-casing) can merge source keys.

        The row with the latest cursor value wins; only then are rows held in
        memory, since without a key transform the source key is unique already.
        """
        if not any(c.name in self.transforms for c in self.key):
            yield from rows
            return
        kept: dict[tuple[Any, ...], dict[str, Any]] = {}
        floor = datetime.min
        for row in rows:
            key = tuple(row[c.name] for c in self.key)
            old = kept.get(key)
            if old is None or (row.get(self.cursor) or floor) >= (old.get(self.cursor) or floor):
                kept[key] = row
        yield from kept.values()

    def _read(self, engine: sa.Engine, url: str,
              since: datetime | None) -> Iterator[dict[str, Any]]:
        """The source rows, typed and transformed, streamed in batches."""
        wanted = [c.name for c in (*self.key, *self.columns)]
        try:
            present = {c["name"] for c in sa.inspect(engine).get_columns(self.source_table)}
        except sa.exc.NoSuchTableError:
            raise SourceError(f"{mask_url(url)} table {self.source_table}",
                              "no such table in the source database") from None
        for name in wanted:
            if name not in present:
                raise SourceError(f"{mask_url(url)} table {self.source_table}",
                                  f"missing column {name!r}", column=name)
        query = sa.select(*(sa.column(n) for n in wanted)).select_from(
            sa.table(self.source_table))
        if since is not None:
            bound: Any = since.strftime("%Y-%m-%d %H:%M:%S") \
                if engine.dialect.name == "sqlite" else since
            query = query.where(sa.column(self.cursor) >= bound)
        convert = [(c.name, _converter(c.type), self.transforms.get(c.name))
                   for c in (*self.key, *self.columns)]
        with engine.connect() as source:
            result = source.execute(query, execution_options={"stream_results": True})
            for batch in result.partitions(BATCH):
                for raw in batch:
                    row = {}
                    for (name, conv, transform), value in zip(convert, raw, strict=True):
                        try:
                            value = conv(value) if value is not None else None
                        except (ValueError, TypeError):
                            raise SourceError(
                                f"{mask_url(url)} table {self.source_table}",
                                f"column {name!r} holds {value!r}, which is not a valid "
                                f"{dict((c.name, c.type) for c in self.columns).get(name, 'key')}",
                                column=name) from None
                        row[name] = transform(value) if transform and value is not None else value
                    yield row


def _source_engine(url: str, name: str) -> sa.Engine:
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise SourceError(name, f"not a database URL: {mask_url(url)!r}") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or not Path(database).is_file():
            raise SourceError(name, f"source database {mask_url(url)} does not exist")
    elif parsed.get_backend_name() == "postgresql":
        # Cursor values are compared as naive UTC, so the session must be in UTC.
        return postgresql_engine(parsed)
    return sa.create_engine(parsed)


def _converter(type_name: str) -> Callable[[Any], Any]:
    if type_name == "timestamp":
        return _timestamp
    if type_name == "date":
        return _date
    if type_name.startswith("decimal"):
        return to_decimal
    if type_name == "integer":
        return int
    if type_name == "text":
        return str
    return lambda value: value


def _timestamp(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    return parse_timestamp(str(value).strip())


def _date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value).strip()[:10])
