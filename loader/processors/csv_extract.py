"""CSV snapshot extract: each file is a full snapshot of one partition of a table.

Files are found by a pattern such as ``sales_{region}.csv``; the placeholder
becomes a key column holding the lowercased partition value. A reload hashes
every record and compares it with the hash stored when the row was loaded:
only new and changed records are parsed and staged, and keys that vanished
are soft-deleted, so a small change costs little. Bad records go to
``rejects`` with their line and a reason code; a file whose header is wrong
fails with an error naming the file and column, and nothing of it changes.
"""

from __future__ import annotations

import array
import hashlib
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field, replace
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loader import bulk, meta
from loader.bulk import postgresql as pg_bulk
from loader.bulk import sqlite as sqlite_bulk
from loader.coltypes import INT64, check_range, places_of, sql_type, stamp_micros
from loader.errors import ConfigError, SchemaError, SourceError
from loader.merge import MergeCounts, delete_hashes, upsert
from loader.processors import csv_copy
from loader.processors.base import Context, Result
from loader.sources.csvfile import (
    BOM,
    CsvFormatError,
    Record,
    iter_raw,
    record_hasher,
    split_fields,
)
from loader.tracking import (
    CHANGED_AT,
    DELETED_AT,
    LIVE_SINCE,
    ROW_HASH,
    Col,
    TrackedTable,
    check_column_name,
    ensure_indexes,
    ensure_table,
    load_table,
    physical_name,
    stamp,
)

Parse = Callable[[str], Any]
# Writes one accepted record: its fields as COPY text when it took the fast path, else its
# parsed values and extra fields; then its hash.
Emit = Callable[[tuple[str, ...] | None, list[Any], list[Any], int], None]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
EXTRA_REASON = "new column in {source}"
# A first load rebuilds the table's indexes after its COPY while the table holds at
# most this many rows per line of the file (PostgreSQL). Measured on 4 files of 250,000
# sales: rebuilding only into the empty table beat rebuilding beside 1 or 3 rows per line.
REBUILD_BESIDE = 0.25
# Reloads that change nothing of the table run on this many connections at once
# (PostgreSQL): one reads and hashes a file while the server merges another's rows.
SIDE_BY_SIDE = 2
# Lines read between two progress reports of a file.
PROGRESS_EVERY = 100_000
# The text of this many parsed records is kept for rejects found after staging.
RAWS_KEPT = 100_000


@dataclass(frozen=True)
class _Out:
    """Where accepted records go: ``emit``, the extra columns it takes (in order), and the
    pattern of records it can take as text (None: every record is parsed). ``write`` takes
    whole COPY text lines that start with ``prefix``, from the compiled scanner."""

    emit: Emit
    extras: list[str]
    pattern: csv_copy.RowPattern | None = None
    write: Callable[[str | bytes], None] | None = None
    prefix: str = ""


@dataclass(frozen=True)
class _Outcome:
    """One file's load: its counts, whether it was its partition's first, or why it
    failed (the file left as it was)."""

    result: Result
    first_load: bool
    failure: str | None


def _add(total: Result, part: Result) -> None:
    """Add one file's counts to the extract's."""
    total.rows_read += part.rows_read
    total.inserted += part.inserted
    total.updated += part.updated
    total.deleted += part.deleted
    total.rejected += part.rejected
    for name, count in part.changes.items():
        total.changes[name] = total.changes.get(name, 0) + count
    if "unchanged" in part.details:
        total.details.setdefault("unchanged", []).extend(part.details["unchanged"])


@dataclass(frozen=True)
class Field:
    """A declared column of the file: its type, its parser and its reject reason.

    An empty field is NULL when ``nullable``, else a reject. ``parse`` turns
    the stripped text into the value (raising ``ValueError`` when it does not
    parse); ``reason`` is the reject reason code (default ``bad_<name>``).
    """

    name: str
    type: str = "text"
    parse: Parse | None = None
    nullable: bool = True
    reason: str | None = None

    @property
    def reject_reason(self) -> str:
        return self.reason or f"bad_{self.name}"


@dataclass
class CsvSnapshot:
    """Load every file matching ``pattern`` in the ``directory_param`` directory."""

    name: str
    table: str
    pattern: str
    key: tuple[str, ...]
    fields: tuple[Field, ...]
    reserved: tuple[str, ...] = ()
    directory_param: str = "data_dir"
    version: str = "1"

    def __post_init__(self) -> None:
        found = _PLACEHOLDER.findall(self.pattern)
        if len(found) != 1:
            raise ConfigError(f"{self.name}: pattern {self.pattern!r} needs exactly one "
                              "{placeholder} for the partition column")
        self.partition: str = found[0]
        names = {f.name for f in self.fields}
        for column in self.key:
            if column != self.partition and column not in names:
                raise ConfigError(f"{self.name}: key column {column!r} is not a field")

    @property
    def reads(self) -> tuple[str, ...]:
        return ()

    @property
    def provides(self) -> tuple[str, ...]:
        return tuple(f"{self.table}.{c}" for c in (self.partition, *(f.name for f in self.fields)))

    def definition(self) -> TrackedTable:
        fields = {f.name: f for f in self.fields}
        key = tuple(Col(c, "text" if c == self.partition else fields[c].type) for c in self.key)
        data = tuple(Col(f.name, f.type) for f in self.fields if f.name not in self.key)
        return TrackedTable(self.table, key, data)

    def files(self, directory: Path) -> dict[str, Path]:
        """The files of ``directory`` by partition value; a case clash is an error."""
        if not directory.is_dir():
            raise ConfigError(f"{self.name}: data directory {str(directory)!r} does not exist")
        head, _, tail = self.pattern.partition("{" + self.partition + "}")
        regex = re.compile(re.escape(head) + r"([A-Za-z0-9_]+)" + re.escape(tail))
        found: dict[str, Path] = {}
        for path in sorted(directory.iterdir()):
            match = regex.fullmatch(path.name)
            if match is None or not path.is_file():
                continue
            value = match.group(1).lower()
            if value in found:
                raise SourceError(path.name, f"{self.partition} {value!r} is also given by "
                                  f"{found[value].name}; partitions may not differ only in case")
            found[value] = path
        return found

    def run(self, ctx: Context) -> Result:
        result = Result()
        directory = Path(ctx.param(self.directory_param))
        files = self.files(directory)
        with ctx.warehouse.begin() as conn:
            loaded = {row.partition: _Recorded(row.source, row.header, row.size, row.kept)
                      for row in conn.execute(sa.select(
                          meta.sources.c.partition, meta.sources.c.source,
                          meta.sources.c.header, meta.sources.c.size,
                          meta.sources.c.row_hashes.is_not(None).label("kept"))
                          .where(meta.sources.c.processor == self.name))}
        missing = sorted(set(loaded) - set(files))
        if missing:
            names = ", ".join(str(loaded[m].source) for m in missing)
            raise SourceError(names, f"loaded before but missing from {directory}; nothing of "
                              f"{'these' if len(missing) > 1 else 'this'} {self.partition} was "
                              "changed. Restore the file, or remove its rows deliberately.")
        with ctx.warehouse.begin() as conn:
            together = self._side_by_side(conn, files, loaded, ctx.full)
        # In file order, as one by one: a file that changes the table loads alone, after
        # the files before it and before those after it, which see its change.
        outcomes: dict[str, _Outcome] = {}
        batch: dict[str, Path] = {}
        for value, path in files.items():
            if value in together:
                batch[value] = path
                continue
            outcomes.update(self._load_side_by_side(ctx, batch))
            batch = {}
            outcomes[value] = self._load_one(ctx, path, value)
        outcomes.update(self._load_side_by_side(ctx, batch))
        first_loads = 0
        for value in files:  # in file order, however they were loaded
            outcome = outcomes[value]
            if outcome.failure is not None:
                result.errors.append(outcome.failure)
                continue
            _add(result, outcome.result)
            first_loads += outcome.first_load
        if first_loads:
            # The planner's statistics, once for every partition loaded for the first
            # time, rather than after each of their files.
            with ctx.warehouse.begin() as conn:
                bulk.analyze(conn, physical_name(self.table))
        result.details["files"] = len(files)
        return result

    def _side_by_side(self, conn: Connection, files: dict[str, Path],
                      loaded: dict[str, _Recorded], full: bool) -> set[str]:
        """The partitions whose files may load side by side, each on its own connection.

        Only reloads that change nothing of the table: the partition has rows and was
        last loaded from the same file name with the same header, whose columns that
        load added. A first load or a new header may change the table (defaults,
        indexes, columns, the view): such a file loads alone, in its place.

        On SQLite, only a refresh's files of another size than recorded (one of the
        recorded size is most often unchanged, which its hash alone tells) whose last
        load kept its hashes. Read from the table, the hashes come row by row through
        Python, and two files reading them at once took longer than one after the other
        (a full run at 1,000,000 sales: 0.93 s against 0.58 s).
        """
        sqlite = conn.dialect.name == "sqlite"
        if len(files) < 2 or (sqlite and full):
            return set()
        table = load_table(conn, self.table)
        if table is None:
            return set()
        # The indexes a load would build, once, before the loads side by side.
        ensure_indexes(conn, replace(table, indexes=self.definition().indexes))
        t = table.table
        # In key order, which the primary key's index gives: without an order the
        # planner, expecting a partition's rows everywhere, scans the heap and reads
        # past every other partition stored before this one.
        in_key_order = [t.c[name] for name in table.key_names]
        together = set()
        for value, path in files.items():
            last = loaded.get(value)
            if last is None or last.source != path.name or last.header is None or (
                    sqlite and (not last.kept or last.size == path.stat().st_size)):
                continue
            has_rows = sa.select(sa.literal(1)).where(
                t.c[self.partition] == value).order_by(*in_key_order).limit(1)
            if _starts_with(path, last.header) and conn.execute(has_rows).first() is not None:
                together.add(value)
        return together if len(together) > 1 else set()

    def _load_one(self, ctx: Context, path: Path, value: str,
                  together: bool = False) -> _Outcome:
        """Load one file in its own transaction; a bad file is a failure, not an error.

        ``together``: a reload beside others. On SQLite it reads the file into its stage
        before it takes the warehouse's write lock (``Warehouse.reading_first``), so
        that one file is read while another is merged.
        """
        part = Result()
        try:
            if together:
                with ctx.warehouse.reading_first() as (conn, write):
                    first_load = self._load_file(conn, ctx, path, value, part, write)
            else:
                with ctx.warehouse.begin() as conn:
                    first_load = self._load_file(conn, ctx, path, value, part)
        except (SourceError, CsvFormatError) as exc:
            return _Outcome(part, False, str(exc))
        return _Outcome(part, first_load, None)

    def _load_side_by_side(self, ctx: Context, files: dict[str, Path]) -> dict[str, _Outcome]:
        """Load ``files`` on ``SIDE_BY_SIDE`` threads, each with its own connection.

        Progress is passed on from this thread, which is the task's.
        """
        if len(files) < 2:
            return {value: self._load_one(ctx, path, value) for value, path in files.items()}
        read: dict[str, int] = {}
        lock = threading.Lock()

        def note(phase: str, done: int, total: int | None) -> None:
            with lock:
                read[phase] = done

        quiet = replace(ctx, progress=note)
        with ThreadPoolExecutor(SIDE_BY_SIDE, thread_name_prefix=self.name) as pool:
            futures = {value: pool.submit(self._load_one, quiet, path, value, True)
                       for value, path in files.items()}
            pending = set(futures.values())
            while pending:
                _, pending = wait(pending, timeout=0.5)
                with lock:
                    counts = list(read.items())
                for phase, done in counts:
                    ctx.progress(phase, done, None)
            return {value: future.result() for value, future in futures.items()}

    def _load_file(self, conn: Connection, ctx: Context, path: Path, value: str,
                   result: Result, write: Callable[[], None] = lambda: None) -> bool:
        """Load one file, unless it is unchanged; True for the first load of its
        partition, which leaves the table to be analysed. ``write`` is called before
        the first write to the warehouse (temporary stages aside)."""
        s = meta.sources
        previous = conn.execute(sa.select(s.c.content_hash, s.c.size).where(
            s.c.processor == self.name, s.c.source == path.name)).first()
        stored = None
        if previous is not None and previous.size not in (None, path.stat().st_size):
            # A file of another size has changed: its stored hashes are read while the
            # file is hashed on another thread (hashlib lets go of the GIL).
            with ThreadPoolExecutor(1) as pool:
                digesting = pool.submit(_file_digest, path)
                stored = self._stored_hashes(conn, ctx, path, value)
                found = digesting.result()
        else:
            # Lines are counted in this pass only for a file that loads whatever its hash.
            found = _file_digest(path, count_lines=ctx.full or previous is None)
        if not ctx.full and previous is not None and previous.content_hash == found.content:
            result.details.setdefault("unchanged", []).append(path.name)
            return False
        if found.line_feeds is None:
            found = _file_digest(path)
        assert found.line_feeds is not None
        if found.nul_line is not None:
            # Like bad UTF-8, a file error: text columns (on PostgreSQL) cannot hold it.
            raise CsvFormatError(path, found.nul_line, "a NUL character is not text")
        if stored is None:
            stored = self._stored_hashes(conn, ctx, path, value)
        with closing(iter_raw(path)) as records:
            first = next(records, None)
        header = None if first is None else Record(first[0], first[1], split_fields(first[1]))
        if header is None:
            raise SourceError(path.name, "the file is empty: it has no header row", line=1)
        columns, extras = self._columns(conn, path, header)
        # Declared columns first, so that extras are always recorded as added columns.
        ensure_table(conn, self.definition(), run_id=ctx.run_id, now=ctx.run_ts)
        table = ensure_table(
            conn, self.definition().with_columns([Col(c, "text") for c in extras]),
            run_id=ctx.run_id, now=ctx.run_ts,
            reason=EXTRA_REASON.format(source=path.name))
        all_extras = self._known_extras(conn, table)
        loader = _FileLoad(self, table, path, value, columns, all_extras, found.line_feeds)
        salt = hashlib.blake2b(
            f"{self.version}\n{value}\n{header.raw}".encode(), digest_size=32).digest()
        counts, rejects, read, first_load = loader.load(conn, ctx, salt, stored, write)
        result.rows_read += read
        result.inserted += counts.inserted
        result.updated += counts.updated
        result.deleted += counts.deleted
        result.rejected += len(rejects)
        result.count_changes(table.name, counts.changes)
        conn.execute(meta.rejects.delete().where(meta.rejects.c.source == path.name))
        if rejects:
            conn.execute(meta.rejects.insert(), [
                {"source": path.name, "line": r[0], "reason": r[1], "raw": r[2],
                 "run_id": ctx.run_id, "rejected_at": ctx.run_ts} for r in rejects])
        conn.execute(s.delete().where(s.c.processor == self.name, s.c.source == path.name))
        # Hashes kept by a load of another file of this partition (named in another case)
        # no longer describe its rows.
        conn.execute(s.update().where(s.c.processor == self.name, s.c.partition == value,
                                      s.c.row_hashes.is_not(None)).values(row_hashes=None))
        conn.execute(s.insert().values(processor=self.name, source=path.name, partition=value,
                                       content_hash=found.content, size=found.size,
                                       header=header.raw, run_id=ctx.run_id,
                                       loaded_at=ctx.run_ts, row_hashes=loader.live))
        return first_load

    def _stored_hashes(self, conn: Connection, ctx: Context, path: Path,
                       value: str) -> csv_copy.HashSet:
        """The hashes of the live rows of partition ``value`` (none before the table
        exists).

        A refresh takes them as the last load of ``path`` kept them, when it did; a full
        run reads them from the table, which it trusts over what was kept.
        """
        if not ctx.full:
            s = meta.sources
            kept = _bytes_value(conn, sa.select(s.c.row_hashes).where(
                s.c.processor == self.name, s.c.source == path.name,
                s.c.partition == value))
            if kept is not None:
                return csv_copy.hashes_from_bytes(kept)
        table = load_table(conn, self.table)
        if table is None:
            return csv_copy.hashes()
        t = table.table
        return _stored_hashes(conn, t.c[ROW_HASH], t.c[self.partition] == value,
                              t.c[DELETED_AT].is_(None))

    def _columns(self, conn: Connection, path: Path,
                 header: Record) -> tuple[list[str], list[str]]:
        """The header's column names, and those of them that are extras."""
        names = header.fields
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise SourceError(path.name, f"column {name!r} appears twice in the header",
                                  line=header.line, column=name)
            seen.add(name)
        declared = [f.name for f in self.fields]
        for name in declared:
            if name not in seen:
                raise SourceError(path.name, f"missing column {name!r} in the header "
                                  f"(found: {', '.join(names)})", line=header.line, column=name)
        extras = [n for n in names if n not in declared]
        folded = [n.lower() for n in extras]
        for name in extras:
            if folded.count(name.lower()) > 1:
                raise SourceError(path.name, f"columns {name!r} and another spelled alike in "
                                  "another case name the same column", line=header.line,
                                  column=name)
        table = load_table(conn, self.table)
        mine = {c.lower() for c in self._known_extras(conn, table)} if table else set()
        taken = {c.lower() for c in (self.partition, *declared, *self.reserved)}
        if table is not None:
            taken |= {c.name.lower() for c in table.all_columns} - mine
        for name in extras:
            try:
                check_column_name(name)
            except SchemaError as exc:
                raise SourceError(path.name, str(exc), line=header.line, column=name) from None
            if name.lower() in taken:
                raise SourceError(path.name, f"extra column {name!r} clashes with column "
                                  f"{name!r} of {self.table}", line=header.line, column=name)
        return names, extras

    def _known_extras(self, conn: Connection, table: TrackedTable | None) -> list[str]:
        """Extra columns this extract added to the table earlier, in table order."""
        if table is None:
            return []
        h = meta.schema_history
        added = set(conn.execute(sa.select(h.c.column_name).where(
            h.c.table_name == self.table, h.c.change == "add_column",
            h.c.reason.like(EXTRA_REASON.format(source="%")))).scalars())
        return [c.name for c in table.columns if c.name in added]


class _Recorded(NamedTuple):
    """What ``loader_sources`` recorded of a partition's last load."""

    source: str
    header: str | None
    size: int | None
    kept: bool  # its live rows' hashes


@dataclass
class _FileLoad:
    """Loading one file into its partition: compare hashes, parse, stage, merge."""

    extract: CsvSnapshot
    table: TrackedTable
    path: Path
    value: str
    header: list[str]
    extras: list[str]
    line_feeds: int  # in the file: about its number of records
    rejects: list[tuple[int, str, str]] = field(default_factory=list)
    # The line of each staged key (made by ``load``, sized for what it stages).
    _staged_at: csv_copy.KeyLines = field(init=False)
    # The hash and line of each record that matched a stored hash, in file order.
    _matched: array.array[int] = field(default_factory=lambda: array.array("q"))
    _matched_at: array.array[int] = field(default_factory=lambda: array.array("q"))
    _raws: dict[int, str] = field(default_factory=dict)  # the text of parsed records
    # Matched hashes whose key a staged record took over (it came first in the file).
    _replaced: set[int] = field(default_factory=set)
    # After a reload: the hashes of the partition's live rows, packed as
    # ``csv_copy.hashes_to_bytes`` packs them.
    live: bytes | None = None

    def load(self, conn: Connection, ctx: Context, salt: bytes, stored: csv_copy.HashSet,
             write: Callable[[], None] = lambda: None,
             ) -> tuple[MergeCounts, list[tuple[int, str, str]], int, bool]:
        """Load the records; returns the merge counts, the rejects, the records read, and
        whether this was the partition's first load.

        ``stored`` are the partition's stored row hashes (as read before). The first
        load of a partition copies straight into the tracked table, and leaves it for
        the caller to analyse; later loads stage only new and changed records and merge
        them. ``write`` is called before the first write outside the stage: for a later
        load, once the file is read.
        """
        x = self.extract
        t = self.table.table
        in_partition = t.c[x.partition] == self.value
        direct = not stored and conn.execute(
            sa.select(sa.func.count()).where(in_partition)).scalar_one() == 0
        names = [x.partition, *(f.name for f in x.fields), *self.extras]
        data = [n for n in names if n not in x.key]
        columns = [(n, sql_type(self.table.col(n).type)) for n in names]
        columns.append((ROW_HASH, sa.BigInteger()))
        # A first load stages every key, most likely; a reload the changed records' keys.
        self._staged_at = csv_copy.key_lines(self.line_feeds if direct else 0)
        if direct:
            write()
            if conn.dialect.name == "postgresql":
                read, loaded = self._first_load_copy(conn, ctx, salt)
            else:
                target = _direct_target(self.table, names)
                # The same stamp in every row, converted once to what SQLite stores.
                suffix = [stamp_micros(ctx.run_ts)] * (len(self.table.columns) + 2)
                with sqlite_bulk.batches(conn, target) as out:
                    read, loaded = self._each_row(ctx, salt, stored,
                                                  self._stored_rows(out, suffix))
            counts = MergeCounts(inserted=loaded, changes={c: loaded for c in data} if loaded
                                 else {})
            return counts, self.rejects, read, True
        with bulk.stage(conn, f"{x.name}_rows", columns, key=x.key) as staged:
            if conn.dialect.name == "postgresql":
                with self._copy_lines(conn, staged.name) as emit:
                    read, _ = self._each_row(ctx, salt, stored, emit)
            else:
                with sqlite_bulk.batches(conn, staged) as out:
                    read, _ = self._each_row(ctx, salt, stored, self._stored_rows(out, []))
            write()
            # ``stored`` now holds the hashes no record matched: rows changed or gone.
            restaged = self._unchanged_duplicates(conn, staged, stored)
            counts = upsert(conn, self.table, staged, data, ctx.run_ts, with_hash=True)
            # The live rows now: those of the records that matched (but for keys a staged
            # record took over), and every staged record, merged.
            self.live = csv_copy.hashes_to_bytes(
                (h for h in self._matched if h not in self._replaced) if self._replaced
                else self._matched,
                conn.execute(sa.select(staged.c[ROW_HASH])).scalars())
        if len(stored) > restaged:
            # The merge gave every restaged row its new hash: rows that still have an
            # unmatched hash are no longer in the file.
            with bulk.stage(conn, f"{x.name}_gone", [(ROW_HASH, sa.BigInteger())]) as gone:
                bulk.load(conn, gone, ([h] for h in stored))
                counts.deleted = delete_hashes(conn, self.table, gone, in_partition,
                                               ctx.run_ts)
        return counts, self.rejects, read, False

    def _unchanged_duplicates(self, conn: Connection, staged: sa.Table,
                              unmatched: csv_copy.HashSet) -> int:
        """Settle staged records whose key is also that of an unchanged record.

        Returns how many staged records replace a stored row that no record matched:
        when that is all of them, no row is gone from the file.

        Unchanged records are recognised by their hash alone, without their key, so a
        staged record may share its key with one (a repeated line, or a changed and an
        unchanged line of one key). As everywhere, the first record of a key wins and
        the later one is a ``duplicate_key``.
        """
        x = self.extract
        t = self.table.table
        s = staged
        key = list(x.key)
        own = [k for k in x.key if k != x.partition]
        found = conn.execute(
            sa.select(*(s.c[k] for k in own), t.c[ROW_HASH])
            .select_from(s.join(t, sa.and_(*(t.c[k] == s.c[k] for k in key))))
            .where(t.c[DELETED_AT].is_(None))).all()
        clashes = {row[-1]: (row[0] if len(own) == 1 else tuple(row[:-1]))
                   for row in found if row[-1] not in unmatched}
        restaged = len(found) - len(clashes)
        if not clashes:
            return restaged
        matched_at = self._matched_lines(set(clashes))
        for digest, own_value in clashes.items():
            unchanged, parsed = matched_at[digest], self._staged_at.line_of(own_value)
            if unchanged < parsed:
                self._reject(parsed, self._raw(parsed), "duplicate_key")
                values = iter((own_value,) if len(own) == 1 else own_value)
                conn.execute(sa.delete(s).where(*(
                    s.c[k] == (self.value if k == x.partition else next(values))
                    for k in key)))
            else:
                self._reject(unchanged, self._raw(unchanged), "duplicate_key")
                self._replaced.add(digest)
        return restaged

    def _matched_lines(self, digests: set[int]) -> dict[int, int]:
        """The line of the record that matched each of these stored hashes."""
        if len(digests) > 50:
            return {h: line for h, line in zip(self._matched, self._matched_at, strict=True)
                    if h in digests}
        return {h: self._matched_at[self._matched.index(h)] for h in digests}

    def _raw(self, line: int) -> str:
        """The text of the record at ``line``: kept if it was parsed, else read again."""
        if line in self._raws:
            return self._raws[line]
        for at, raw in iter_raw(self.path):
            if at == line:
                return raw
        raise AssertionError(f"{self.path.name} has no record at line {line}")

    def _first_load_copy(self, conn: Connection, ctx: Context,
                         salt: bytes) -> tuple[int, int]:
        """PostgreSQL's first load of a partition: COPY text lines into the tracked table.

        The stamps, all the run's timestamp, come from column defaults set for the
        load. When the file is large beside the table (other partitions), the indexes
        are built once after the COPY instead of row by row.
        """
        physical = self.table.physical
        stamps = [*(stamp(c.name) for c in self.table.columns), CHANGED_AT, LIVE_SINCE]
        with ExitStack() as stack:
            stack.enter_context(pg_bulk.filled_by_default(conn, physical, stamps, ctx.run_ts))
            if pg_bulk.estimated_rows(conn, physical) <= REBUILD_BESIDE * self.line_feeds:
                stack.enter_context(pg_bulk.indexes_built_after(conn, physical))
            emit = stack.enter_context(self._copy_lines(conn, physical))
            return self._each_row(ctx, salt, csv_copy.hashes(), emit)

    @contextmanager
    def _copy_lines(self, conn: Connection, table: str) -> Iterator[_Out]:
        """An output that streams rows as COPY text to ``table``.

        Records of the common plain shape go through ``RowPattern`` as text; the rest
        are formatted from their parsed values.
        """
        x = self.extract
        folded = {name.lower(): name for name in self.header}
        present = [(extra, folded[extra.lower()]) for extra in self.extras
                   if extra.lower() in folded]
        copy_columns = [x.partition, *(f.name for f in x.fields), *(e for e, _ in present),
                        ROW_HASH]
        tab = "\t"
        prefix = csv_copy.escape(self.value) + tab
        buffer: list[str] = []
        append = buffer.append
        text = csv_copy.copy_text
        with pg_bulk.text_writer(conn, table, copy_columns) as write:

            def emit(fast: tuple[str, ...] | None, values: list[Any], extras: list[Any],
                     digest: int) -> None:
                if fast is None:
                    fast = (*map(text, values), *map(text, extras))
                append(f"{prefix}{tab.join(fast)}{tab}{digest}\n")
                if len(buffer) >= 2000:
                    write("".join(buffer))
                    buffer.clear()

            yield _Out(emit, [e for e, _ in present], self._pattern([h for _, h in present]),
                       write, prefix)
            if buffer:
                write("".join(buffer))

    def _pattern(self, extra_names: list[str]) -> csv_copy.RowPattern | None:
        x = self.extract
        columns = {f.name: csv_copy.Column(f.name, f.parse, f.type, f.nullable, f.name in x.key)
                   for f in x.fields}
        return csv_copy.RowPattern.build(self.header, columns,
                                         [*(f.name for f in x.fields), *extra_names])

    def _stored_rows(self, out: sqlite_bulk.Batches, suffix: list[Any]) -> _Out:
        """An output that appends rows to SQLite through ``out``, then ``suffix``.

        Parsed records go through the column types' bind processors. Plain records (see
        ``RowPattern``) go as their text converted to what SQLite stores; the compiled
        scanner's whole blocks of them, column by column.
        """
        value = self.value
        folded = {name.lower(): name for name in self.header}
        present = [folded[e.lower()] for e in self.extras if e.lower() in folded]
        put = out.put

        def parsed(fast: tuple[str, ...] | None, values: list[Any], extras: list[Any],
                   digest: int) -> None:
            put([value, *values, *extras, digest, *suffix])

        pattern = self._pattern(present)
        if pattern is None:
            return _Out(parsed, self.extras)
        stored = csv_copy.SqliteValues.of(pattern)
        width = len(self.extract.fields)
        # Where each extra column is among the written fields; None if the file lacks it.
        written = iter(range(width, width + len(present)))
        slots = [next(written) if e.lower() in folded else None for e in self.extras]
        fill = [repeat(None) for _ in slots]

        def emit(fast: tuple[str, ...] | None, values: list[Any], extras: list[Any],
                 digest: int) -> None:
            if fast is None:
                parsed(fast, values, extras, digest)
                return
            fields = stored.row(fast)
            out.put_stored([[value, *fields[:width],
                             *(None if i is None else fields[i] for i in slots),
                             digest, *suffix]])

        def write(text: str | bytes) -> None:
            columns, hashes = stored.columns(text.decode() if isinstance(text, bytes)
                                             else text)
            extras = [f if i is None else columns[i] for f, i in zip(fill, slots, strict=True)]
            out.put_stored(zip(repeat(value), *columns[:width], *extras, hashes,
                               *map(repeat, suffix)))

        return _Out(emit, self.extras, pattern, write)

    def _each_row(self, ctx: Context, salt: bytes, stored: csv_copy.HashSet,
                  out: _Out) -> tuple[int, int]:
        """Parse and write every new or changed record; returns records read and written.

        A record whose hash is in ``stored`` (the hashes the previous load stored) is
        unchanged: it is neither split nor parsed, and its hash leaves ``stored`` (each
        stored hash matches once, so a repeated line is parsed and found a duplicate).
        When the compiled scanner is built, it takes the plain records the same way and
        leaves the others to this loop.
        """
        x = self.extract
        position = {name: i for i, name in enumerate(self.header)}
        own_key = [position[k] for k in x.key if k != x.partition]
        parsers = [(position[f.name], _ranged(f), f.nullable, f.reject_reason)
                   for f in x.fields]
        folded = {name.lower(): i for i, name in enumerate(self.header)}
        extra_at = [folded.get(name.lower()) for name in out.extras]
        field_at = {f.name: i for i, f in enumerate(x.fields)}
        key_values = [field_at[k] for k in x.key if k != x.partition]
        single = key_values[0] if len(key_values) == 1 else None
        width = len(self.header)
        hash_record = record_hasher(salt)
        plain = out.pattern.fields if out.pattern is not None else None
        emit = out.emit
        staged_at = self._staged_at
        raws = self._raws
        # Only a reload can find a parsed record to be a duplicate after staging.
        keep = RAWS_KEPT if stored else 0
        matched, matched_at = self._matched.append, self._matched_at.append
        no_values: list[Any] = []
        read = written = 0
        scanner = None
        if out.write is not None and out.pattern is not None:
            scanner = out.pattern.scanner(key_values, out.prefix, salt, stored, staged_at,
                                          raws, keep)
        progress = f"{x.name}:{self.path.name}"

        def take_plain(data: bytes, pos: int, lines: int) -> tuple[int, int]:
            assert scanner is not None and out.write is not None
            nonlocal read, written
            pos, lines, taken, wrote, text, hashes, at = scanner.scan(data, pos, lines)
            if text:
                out.write(text)
            if hashes:
                self._matched.frombytes(hashes)
                self._matched_at.frombytes(at)
            if (read + taken) // PROGRESS_EVERY > read // PROGRESS_EVERY:
                ctx.progress(progress, read + taken, None)
            read += taken
            written += wrote
            return pos, lines

        records = iter_raw(self.path, skip=1,
                           fast=take_plain if scanner is not None else None)
        for line, raw in records:
            read += 1
            digest = hash_record(raw)
            if digest in stored:
                stored.discard(digest)
                matched(digest)
                matched_at(line)
                continue
            fast = None
            if plain is not None:
                try:
                    fast = plain(raw)
                except csv_copy.NotFast:
                    fast = None
            if fast is not None:
                key = fast[single] if single is not None else tuple(fast[i] for i in key_values)
                values = extras = no_values
            else:
                fields = split_fields(raw)
                if len(fields) != width:
                    self._reject(line, raw, "field_count")
                    continue
                if any(fields[i] == "" for i in own_key):
                    self._reject(line, raw, "empty_key")
                    continue
                parsed = _parse(fields, parsers)
                if isinstance(parsed, str):
                    self._reject(line, raw, parsed)
                    continue
                values = parsed
                key = values[single] if single is not None else tuple(
                    values[i] for i in key_values)
                extras = [None if i is None or fields[i] == "" else fields[i]
                          for i in extra_at]
            if staged_at.add(key, line) is not None:
                self._reject(line, raw, "duplicate_key")
                continue
            if len(raws) < keep:
                raws[line] = raw
            emit(fast, values, extras, digest)
            written += 1
            if read % PROGRESS_EVERY == 0:
                ctx.progress(progress, read, None)
        return read, written

    def _reject(self, line: int, raw: str, reason: str) -> None:
        self.rejects.append((line, reason, raw))


def _stored_hashes(conn: Connection, column: sa.ColumnElement[Any],
                   *where: sa.ColumnElement[bool]) -> csv_copy.HashSet:
    """The stored row hashes of the rows ``where`` selects, as ``csv_copy.hashes``.

    On PostgreSQL they come as one binary value of 8 bytes a hash: a million of them in
    an eighth of a second, where a million rows through the driver take over a second.
    On SQLite they are read straight from the driver's cursor, which takes a fifth of
    the time of SQLAlchemy's rows.
    """
    if conn.dialect.name == "sqlite":
        compiled = sa.select(column).where(*where).compile(dialect=conn.dialect)
        params = [compiled.params[name] for name in compiled.positiontup or ()]
        driver = conn.connection.driver_connection
        assert driver is not None
        with closing(driver.cursor()) as cursor:
            return csv_copy.hashes(map(itemgetter(0), cursor.execute(str(compiled), params)))
    return csv_copy.hashes_from_bytes(_bytes_value(conn, sa.select(sa.func.string_agg(
        sa.func.int8send(column), sa.literal(b"", sa.LargeBinary))).where(*where)) or b"")


def _bytes_value(conn: Connection, query: sa.Select[Any]) -> bytes | None:
    """The one bytes value ``query`` selects (None for no row or NULL).

    On PostgreSQL it comes through a binary cursor: as text, bytea doubles in size and
    the kept hashes of 250,000 rows (2 MB) took 12-18 ms to fetch instead of 2.5 ms.
    """
    if conn.dialect.name != "postgresql":
        found = conn.execute(query).scalar()
        return None if found is None else bytes(found)
    compiled = query.compile(dialect=conn.dialect)
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cursor:
        row = cursor.execute(str(compiled), compiled.params).fetchone()
    return None if row is None or row[0] is None else bytes(row[0])


def _direct_target(table: TrackedTable, names: list[str]) -> sa.Table:
    """The tracked table's columns in the order the first-load rows are written."""
    t = table.table
    stamps = [*(stamp(c.name) for c in table.columns), CHANGED_AT, LIVE_SINCE]
    return sa.Table(t.name, sa.MetaData(),
                    *(sa.Column(n, t.c[n].type) for n in [*names, ROW_HASH]),
                    *(sa.Column(n, sa.BigInteger()) for n in stamps))


def _starts_with(path: Path, header: str) -> bool:
    """Whether the file's first line is ``header`` (after a byte order mark, if any).

    Reads only as many bytes; a file that cannot be read is not, and its load says why.
    """
    wanted = header.encode()
    try:
        with path.open("rb") as stream:
            data = stream.read(len(BOM) + len(wanted) + 2)
    except OSError:
        return False
    data = data.removeprefix(BOM)
    rest = data[len(wanted):]
    return data.startswith(wanted) and rest.startswith((b"\n", b"\r\n"))


def _parse(fields: list[str],
           parsers: list[tuple[int, Parse | None, bool, str]]) -> list[Any] | str:
    """The parsed values in declared order, or the reason code of the first bad one."""
    values: list[Any] = []
    for i, parse, nullable, reason in parsers:
        text = fields[i]
        if text == "":
            if not nullable:
                return reason
            values.append(None)
        elif parse is None:
            values.append(text)
        else:
            try:
                values.append(parse(text))
            except ValueError:
                return reason
    return values


def _ranged(field: Field) -> Parse | None:
    """The field's parser, also rejecting values its column type cannot hold."""
    parse = field.parse
    if parse is None:
        return None
    if field.type == "integer":
        low, high = -INT64, INT64

        def checked_int(text: str) -> Any:
            value = parse(text)
            if not low <= value < high:
                raise ValueError(f"{value} does not fit a 64-bit integer")
            return value

        return checked_int
    if field.type.startswith("decimal"):
        type_name = field.type

        def checked_decimal(text: str) -> Any:
            return check_range(type_name, parse(text))

        return checked_decimal if places_of(type_name) is not None else parse
    return parse


@dataclass(frozen=True)
class _Digest:
    """What one pass over a file's bytes tells before it is loaded."""

    content: str  # the SHA-256 of the file
    size: int  # bytes
    line_feeds: int | None  # None when not counted
    nul_line: int | None  # the first line holding a NUL character, if any (and counted)


def _file_digest(path: Path, *, count_lines: bool = True) -> _Digest:
    """The file's SHA-256 and size; with ``count_lines``, how many line feeds it holds and
    where its first NUL is.

    Counting costs as much as hashing, and a file found unchanged needs no count: at
    1,000,000 sales, hashing the four files took 0.065 s, counting 0.085 s more.
    """
    digest = hashlib.sha256()
    size = lines = 0
    nul_line = None
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
            if not count_lines:
                continue
            if nul_line is None and (at := chunk.find(b"\x00")) >= 0:
                nul_line = lines + chunk.count(b"\n", 0, at) + 1
            lines += chunk.count(b"\n")
    return _Digest(digest.hexdigest(), size, lines if count_lines else None, nul_line)
