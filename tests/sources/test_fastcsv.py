"""The compiled path for plain records (``loader._fastcsv``) agrees with the Python path.

The Python path is the definition: ``RowPattern.fields`` for a record's COPY text,
``record_hash`` for its hash, the loop of ``CsvSnapshot`` for what happens to it. The
compiled scanner may leave a record to Python, but what it takes it must take exactly
as Python would, and a whole load must end the same with it as without it.
"""

from __future__ import annotations

import array
import hashlib
import os
import random
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import warehouse_on
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite

from loader import CsvSnapshot, Field, run_sequence
from loader.coltypes import sql_type
from loader.processors import csv_copy
from loader.processors.csv_copy import Column, NotFast, RowPattern
from loader.sources import csvfile
from loader.sources.csvfile import (
    parse_code,
    parse_date,
    parse_decimal,
    parse_int,
    parse_timestamp,
    record_hash,
)

from .test_csvfile import _NEAR_MISS, _common_timestamps

if not csv_copy.COMPILED and os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
    pytest.skip("loader._fastcsv is not built (no C compiler?)", allow_module_level=True)


def test_the_compiled_path_is_built() -> None:
    """CI builds the extension; without it every record would silently take Python."""
    assert csv_copy.COMPILED, "loader._fastcsv was not built (is a C compiler installed?)"


# The columns of the drawn records: a key, then one field of each kind.
FIELDS = [
    ("id", None, "text", False),
    ("at", parse_timestamp, "timestamp", False),
    ("n", parse_int, "integer", True),
    ("amount", parse_decimal(2), "decimal:2", True),
    ("currency", parse_code(3), "text", True),
    ("day", parse_date, "date", True),
    ("note", None, "text", True),
]
HEADER = [name for name, *_ in FIELDS]
SALT = b"0123456789abcdef0123456789abcdef"

_TEXT = st.text(alphabet=st.sampled_from(list('ab ,"\\\t\ré\x0b\x1c\u00a0\x00\x7f')),
                max_size=6)
_NUMBER = st.one_of(st.from_regex(r"\A[+-]?[0-9]{1,20}(\.[0-9]{0,4})?\Z"),
                    st.text(alphabet=st.sampled_from(list("0123456789+-. ")), max_size=8))
_FIELD = {
    "id": st.one_of(st.sampled_from(["k1", "k2", "k3"]), _TEXT),
    "at": st.one_of(_common_timestamps(), _NEAR_MISS),
    "n": _NUMBER,
    "amount": _NUMBER,
    "currency": st.one_of(st.sampled_from(["AUD", "usd", "EU", "EURO", ""]), _TEXT),
    "day": st.one_of(st.dates().map(str), st.sampled_from(["2024-02-29", "2023-02-29",
                                                            "0000-01-01", "2024-13-01", ""])),
    "note": _TEXT,
}
RECORDS = st.one_of(
    st.tuples(*(_FIELD[name] for name in HEADER)).map(",".join),
    st.lists(st.one_of(*_FIELD.values()), max_size=9).map(",".join),
).map(lambda raw: raw.replace("\n", " "))


def pattern() -> RowPattern:
    columns = {name: Column(name, parse, type_name, nullable, name == "id")
               for name, parse, type_name, nullable in FIELDS}
    found = RowPattern.build(HEADER, columns, HEADER)
    assert found is not None
    return found


def scanner(stored: Any = None, keys: csv_copy.KeyLines | None = None,
            raws: dict[int, str] | None = None, keep: int = 0) -> Any:
    found = pattern().scanner([0], "part\t", SALT,
                              csv_copy.hashes() if stored is None else stored,
                              csv_copy.key_lines() if keys is None else keys,
                              {} if raws is None else raws, keep)
    assert found is not None
    return found


def python_text(raw: str) -> str | None:
    """The COPY line the Python loop writes for ``raw`` when it takes the plain path."""
    try:
        fields = pattern().fields(raw)
    except NotFast:
        return None
    if fields is None:
        return None
    return "part\t" + "\t".join(fields) + f"\t{record_hash(raw, SALT)}\n"


def quoted_text(raw: str) -> str | None:
    """What ``python_text`` gives for a record with quoted fields, with any comma inside
    a field written as ``;`` (only text may hold one): the line of the same fields
    written without quotes, with the hash of ``raw``. None when there is no such
    record (a quote inside a field) or it is not plain."""
    fields = csvfile.split_fields(raw)
    unquoted = ",".join(f.replace(",", ";") for f in fields)
    if '"' in unquoted or len(csvfile.split_fields(unquoted)) != len(fields):
        return None
    text = python_text(unquoted)
    if text is None:
        return None
    return text.rsplit("\t", 1)[0] + f"\t{record_hash(raw, SALT)}\n"


def ends_outside_ascii(raw: str) -> bool:
    """A field starting or ending with a non-ASCII character: left to Python by design."""
    return any(not f[:1].isascii() or not f[-1:].isascii() for f in raw.split(","))


@settings(max_examples=1500, deadline=None)
@given(RECORDS)
def test_a_record_is_taken_as_python_takes_it(raw: str) -> None:
    """The line ``raw`` is taken, with Python's COPY text and hash, exactly when Python's
    plain path takes it, except that a field with a non-ASCII first or last character
    is left to Python."""
    record = raw[:-1] if raw.endswith("\r") else raw  # the line end, as iter_raw reads it
    staged = csv_copy.key_lines()
    data = (raw + "\n").encode()
    pos, lines, read, written, text, matched, _ = scanner(keys=staged).scan(data, 0, 4)
    assert matched == b""
    if record == "":
        assert (pos, lines, read, text) == (len(data), 5, 0, b"")
        return
    if '"' in record:
        # Quoted fields: what C writes must be what Python reads; which quoted records
        # it takes is checked by the next test.
        if read:
            assert text.decode().replace(",", ";") == quoted_text(record)
            assert len(staged) == 1 and staged.line_of(csvfile.split_fields(record)[0]) == 5
        return
    expected = python_text(record)
    if read:
        assert (pos, lines, read, written) == (len(data), 5, 1, 1)
        assert text.decode() == expected
        assert len(staged) == 1 and staged.line_of(record.split(",")[0]) == 5
    else:
        assert (pos, lines, written, text, len(staged)) == (0, 4, 0, b"", 0)
        assert expected is None or ends_outside_ascii(record), record


# Records of valid values, mostly of the plain shape.
_PLAIN = st.tuples(
    st.sampled_from(["k1", "k2"]),
    _common_timestamps(),
    st.one_of(st.just(""), st.integers(-(10**17), 10**17).map(str),
              st.sampled_from(["+7", "-0", "007"])),
    st.one_of(st.just(""), st.decimals(-(10**14), 10**14, places=2).map(str),
              st.decimals(-(10**14), 10**14, places=1).map(str),
              st.sampled_from(["+1.5", "-0.00", "12", "0.1", "99999999999999.99"])),
    st.sampled_from(["AUD", "USD", ""]),
    st.one_of(st.just(""), st.dates().map(str)),
    st.one_of(st.just(""), st.text(alphabet="ab-é", min_size=1, max_size=5)),
)


def stored_by_parsers(values: tuple[str, ...]) -> list[Any]:
    """What SQLite stores for the fields of a record parsed in Python: each parser's
    value through its column type's bind processor."""
    dialect = sqlite.dialect()
    stored = []
    for text, (_, parse, type_name, _) in zip(values, FIELDS, strict=True):
        value = None if text == "" else parse(text) if parse is not None else text
        process = sql_type(type_name)._cached_bind_processor(dialect)
        stored.append(value if process is None or value is None else process(value))
    return stored


@settings(max_examples=1000, deadline=None)
@given(_PLAIN)
def test_sqlite_stores_plain_text_as_it_stores_parsed_values(values: tuple[str, ...]) -> None:
    """SQLite has no COPY: the text of a plain record, from ``RowPattern`` or from the
    scanner, is converted in Python. Each value, and its type (2 and 2.0 are equal in
    Python, not in SQLite), must be what the parsers and the column types store."""
    raw = ",".join(values)
    try:
        fields = pattern().fields(raw)
    except NotFast:
        fields = None
    assume(fields is not None)
    assert fields is not None
    convert = csv_copy.SqliteValues.of(pattern())
    expected = [(type(v), v) for v in stored_by_parsers(values)]
    assert [(type(v), v) for v in convert.row(fields)] == expected
    found = pattern().scanner([0], "", SALT, csv_copy.hashes(), csv_copy.key_lines(), {}, 0)
    _, _, read, _, text, _, _ = found.scan((raw + "\n").encode(), 0, 1)
    if read:  # the scanner leaves fields with a non-ASCII end to Python
        columns, digests = convert.columns(text.decode())
        assert [[(type(v), v) for v in row] for row in zip(*columns, strict=True)] == [
            expected]
        assert digests == [record_hash(raw, SALT)]


def test_sqlite_timestamps_have_every_part() -> None:
    assert [csv_copy.sqlite_timestamp(t) for t in (
        "2024-03-01", "2024-03-01T10:05", "2024-03-01 10:05:09", "2024-03-01T10:05:09.5",
        "2024-03-01 10:05:09.123456")] == [
        "2024-03-01 00:00:00.000000", "2024-03-01 10:05:00.000000",
        "2024-03-01 10:05:09.000000", "2024-03-01 10:05:09.500000",
        "2024-03-01 10:05:09.123456"]


@settings(max_examples=500, deadline=None)
@given(st.tuples(*(_FIELD[name] for name in HEADER)), st.lists(st.booleans(), min_size=7,
                                                               max_size=7))
def test_a_field_quoted_whole_is_taken_as_its_text(values: tuple[str, ...],
                                                   quote: list[bool]) -> None:
    """Quoting fields (each with no quote or comma inside) changes nothing but the hash:
    the record is taken exactly when it is taken unquoted, with the same fields, and the
    ``csv`` module reads the same fields from both."""
    if any('"' in v or "," in v or "\n" in v or "\r" in v for v in values):
        return
    plain = ",".join(values)
    quoted = ",".join(f'"{v}"' if q else v for v, q in zip(values, quote, strict=True))
    assert csvfile.split_fields(quoted) == csvfile.split_fields(plain)
    found = [scanner().scan((r + "\n").encode(), 0, 0) for r in (plain, quoted)]
    assert found[0][2] == found[1][2]  # read
    if found[0][2]:
        without_hash = [f[4].decode().rsplit("\t", 1)[0] for f in found]
        assert without_hash[0] == without_hash[1]
        assert found[1][4].decode().endswith(f"\t{record_hash(quoted, SALT)}\n")


def test_a_quoted_text_may_hold_commas() -> None:
    raw = 'k1,"2024-03-01T10:00:00Z",1,"2.50",AUD,2024-03-01,"a, b,"'
    assert csvfile.split_fields(raw)[-1] == "a, b,"
    _, _, read, written, text, *_ = scanner().scan((raw + "\n").encode(), 0, 0)
    assert (read, written) == (1, 1)
    assert text.decode().split("\t")[1:-1] == [
        "k1", "2024-03-01T10:00:00", "1", "2.50", "AUD", "2024-03-01", "a, b,"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=64))
def test_the_hash_is_keyed_blake2b(data: bytes, salt: bytes) -> None:
    """The compiled hash is ``record_hash`` (keyed BLAKE2b) for any bytes, over several
    128-byte blocks too."""
    if not data:
        return
    found = pattern().scanner([0], "", salt, csv_copy.hashes(), csv_copy.key_lines(), {}, 0)
    expected = int.from_bytes(hashlib.blake2b(data, digest_size=8, key=salt).digest(), "big",
                              signed=True)
    assert found.record_hash(data) == expected


def test_lines_it_leaves_to_python() -> None:
    """A quote left open (a record of several lines), a quote inside a field, bad UTF-8,
    NUL, a duplicate key and a line without its line feed stop the scan at that line, with
    nothing of it taken; blank lines are passed over."""
    good = "k1,2024-03-01T10:00:00+05:30,1,2.50,AUD,2024-03-01,x"
    for stop in ['k2,2024-03-01,1,1,AUD,2024-03-01,"two', 'k2,2024-03-01,1,1,AUD,2024-03-01,a"b',
                 'k2,2024-03-01,1,1,AUD,2024-03-01,"a""b"', 'k2,2024-03-01,1,1,AUD,2024-03-01,"a" ',
                 "k1,2024-03-01,1,1,AUD,2024-03-01,x", "k2,2024-03-01,1,1,AUD,2024-03-01,\xff",
                 "k2,2024-03-01,1,1,AUD,2024-03-01,a\x00b"]:
        data = (good + "\r\n\n" + stop + "\n").encode("latin-1" if "\xff" in stop else "utf-8")
        pos, lines, read, written, *_ = scanner().scan(data, 0, 0)
        assert (read, written, lines) == (1, 1, 2)
        assert data[pos:].startswith(stop.encode("latin-1")[:3]), stop
    data = (good + "\n" + good.replace("k1", "k2")).encode()
    pos, lines, read, *_ = scanner().scan(data, 0, 0)
    assert (pos, lines, read) == (len(good) + 1, 1, 1)


def test_a_stored_hash_is_matched_before_anything_else() -> None:
    """A record whose hash was stored is read, not written, and leaves the stored hashes;
    its hash and line come back as int64 bytes, as the Python loop records them."""
    same = "k1,2024-03-01,1,,,,x"
    other = "k2,2024-03-01,1,,,,y"
    stored = csv_copy.hashes([record_hash(same, SALT), 7])
    staged = csv_copy.key_lines()
    raws: dict[int, str] = {}
    found = scanner(stored, staged, raws, keep=5)
    _, lines, read, written, text, matched, matched_at = found.scan(
        f"{same}\n{other}\n".encode(), 0, 10)
    assert (read, written, lines) == (2, 1, 12)
    assert list(array.array("q", matched)) == [record_hash(same, SALT)]
    assert list(array.array("q", matched_at)) == [11]
    assert sorted(stored) == [7] and len(stored) == 1
    assert len(staged) == 1 and staged.line_of("k2") == 12 and raws == {12: other}
    assert text.decode() == python_text(other)


def test_runs_of_stored_records_are_matched_as_one_by_one() -> None:
    """Runs of stored records longer than the scanner takes at a time, with blank lines,
    CRLF, a quoted record, new records and a record stored twice among them: each stored
    record is matched once, in order, with its line; the others are written."""
    lines = [f"k{i},2024-03-01,{i},,,,n{i}" for i in range(10_000)]
    lines[3] = ""
    lines[5000] = 'k5000,2024-03-01,1,,,,"quoted, stored"'
    lines[9000] = lines[8999]  # stored once: the second is written, for the merge to find
    new = {7, 4096, 4097, 9000, 9999}
    stored = csv_copy.hashes(record_hash(raw, SALT)
                             for i, raw in enumerate(lines) if raw and i not in new)
    ends = ["\r\n" if i % 3 == 0 else "\n" for i in range(len(lines))]
    data = "".join(raw + end for raw, end in zip(lines, ends, strict=True)).encode()
    pos, count, read, written, text, matched, matched_at = scanner(stored).scan(data, 0, 0)
    expected = [(record_hash(raw, SALT), i + 1) for i, raw in enumerate(lines)
                if raw and i not in new]
    assert list(zip(array.array("q", matched), array.array("q", matched_at),
                    strict=True)) == expected
    assert (pos, count, read, written) == (len(data), len(lines), len(expected) + 5, 5)
    written_lines = [t for i in sorted(new) if (t := python_text(lines[i])) is not None]
    assert len(written_lines) == len(new)
    assert text.decode() == "".join(written_lines)
    assert len(stored) == 0


def test_a_scanner_needs_its_state() -> None:
    """Bad arguments are errors, not crashes: an uninitialised scanner, a plain set for
    the stored hashes, a position outside the data."""
    from loader import _fastcsv

    bare = _fastcsv.Scanner.__new__(_fastcsv.Scanner)
    with pytest.raises(RuntimeError, match="__init__"):
        bare.scan(b"a\n", 0, 0)
    with pytest.raises(RuntimeError, match="__init__"):
        bare.record_hash(b"a")
    with pytest.raises(TypeError, match="Hashes"):
        _fastcsv.Scanner([("text", 0, False)], [0], [0], b"", b"", set(), {}, {}, 0)
    with pytest.raises(ValueError, match="pos"):
        scanner().scan(b"a\n", 5, 0)
    assert pattern().scanner([0], "", SALT, set(), csv_copy.key_lines(), {}, 0) is None
    bare_keys = _fastcsv.KeyLines.__new__(_fastcsv.KeyLines)
    with pytest.raises(RuntimeError, match="__init__"):
        _fastcsv.Scanner([("text", 0, False)], [0], [0], b"", b"", csv_copy.hashes(),
                         bare_keys, {}, 0)
    for call in (lambda: bare_keys.add("a", 1), lambda: bare_keys.line_of("a")):
        with pytest.raises(RuntimeError, match="__init__"):
            call()
    with pytest.raises(ValueError, match="16 bytes"):
        _fastcsv.KeyLines(b"short")
    with pytest.raises(ValueError, match="line"):
        csv_copy.key_lines().add("a", 0)
    with pytest.raises(OverflowError, match="2\\^40"):
        csv_copy.key_lines().add("a", 2**40)


# Keys as loads stage them: text, tuples of text, and parsed values (numbers that
# compare equal across types, dates), with a lone surrogate, which has no UTF-8.
_KEY_PART = st.one_of(st.text(max_size=6), st.sampled_from(["", "a", "\ud800", "s", "t"]),
                      st.integers(-3, 3), st.sampled_from([1.0, 2.5, Decimal("1"), True]),
                      st.dates(date(2024, 1, 1), date(2024, 1, 3)))
KEYS = st.one_of(_KEY_PART, st.tuples(_KEY_PART), st.tuples(_KEY_PART, _KEY_PART),
                 st.tuples(st.text(max_size=3), st.text(max_size=3)))


@pytest.mark.parametrize("compiled", [True, False])
@settings(max_examples=300, deadline=None)
@given(st.lists(KEYS, max_size=60), st.lists(KEYS, max_size=20),
       st.sampled_from([0, 1, 3000, 5000]), st.integers(1, 2**40 - 4000))
def test_key_lines_behave_as_a_dict(compiled: bool, added: list[Any], asked: list[Any],
                                    expected: int, first: int) -> None:
    """``KeyLines``, compiled or not, answers as a dict of key to first line: the same
    earlier lines, the same keys known, the same size, sized for the keys expected or
    not, up to the last line it holds."""
    ours = csv_copy.key_lines(expected) if compiled else csv_copy._DictKeyLines()
    assert isinstance(ours, csv_copy._DictKeyLines) != compiled
    model: dict[Any, int] = {}
    many = [f"N-{n:06d}" for n in range(3000)]  # past the first growths
    for line, key in enumerate([*added, *many, *added], start=first):
        earlier = model.get(key)
        if earlier is None:
            model[key] = line
        assert ours.add(key, line) == earlier
    assert len(ours) == len(model)
    for key in [*added, *asked, *many[::97]]:
        if key in model:
            assert ours.line_of(key) == model[key]
        else:
            with pytest.raises(KeyError):
                ours.line_of(key)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300),
       st.lists(st.integers(-(2**63), 2**63 - 1), max_size=50),
       st.sampled_from([0, 900, 4000]), st.integers(-(2**63), 2**63 - 5000))
def test_hashes_behave_as_a_set(values: list[int], removed: list[int], more: int,
                                start: int) -> None:
    """The compiled set answers as a set: through growth, with removed slots among the
    taken ones, and when read from bytes."""
    ours, model = csv_copy.hashes(values), set(values)
    for value in removed + values[::3]:
        ours.discard(value)
        model.discard(value)
    run = range(start, start + more)  # past the first growths, after the removals
    for value in run:
        ours.add(value)
        model.add(value)
    for value in run[::2]:
        ours.discard(value)
        model.discard(value)
    assert len(ours) == len(model)
    assert sorted(ours) == sorted(model)
    assert all((v in ours) == (v in model) for v in [*values, *removed, *run])
    data = b"".join(v.to_bytes(8, "big", signed=True) for v in [*values, *run])
    assert sorted(csv_copy.hashes_from_bytes(data)) == sorted({*values, *run})
    with pytest.MonkeyPatch.context() as patch:  # and without the extension
        patch.setattr(csv_copy, "_fastcsv", None)
        assert csv_copy.hashes_from_bytes(data) == {*values, *run}


# --------------------------------------------------------------------------- whole loads


def extract() -> CsvSnapshot:
    return CsvSnapshot("events_csv", "events", "events_{p}.csv", ("p", "id"), tuple(
        Field(name, type_name, parse, nullable) for name, parse, type_name, nullable in FIELDS))


def state(wh: Any) -> tuple[list[Any], list[Any]] | None:
    """The table's rows (with their hashes and whether live) and the rejects, if any.

    On SQLite each value comes with its storage class: 2 and 2.0 compare equal in
    Python, but one is stored as an integer and the other as a real.
    """
    columns = ["p", "id", "at", "n", "amount", "currency", "day", "note"]
    if wh.dialect == "sqlite":
        columns += [f"typeof({c})" for c in columns]
    with wh.begin() as conn:
        if not sa.inspect(conn).has_table("events_tracked"):
            return None
        rows = conn.execute(sa.text(
            f"SELECT {', '.join(columns)}, _row_hash, _deleted_at IS NULL "
            "FROM events_tracked ORDER BY p, id")).all()
        rejects = conn.execute(sa.text(
            "SELECT source, line, reason, raw FROM rejects ORDER BY source, line")).all()
    return [tuple(r) for r in rows], [tuple(r) for r in rejects]


@pytest.fixture
def pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every record through Python, as without the extension."""
    monkeypatch.setattr(csv_copy, "_fastcsv", None)
    yield


def load(wh: Any, directory: Path, text: str) -> str | None:
    """Load ``text`` as the file of partition ``a``; the run's error, if it failed."""
    (directory / "events_a.csv").write_text(text, encoding="utf-8", newline="")
    outcome = run_sequence(wh, [extract()], params={"data_dir": str(directory)})
    return outcome.error


def parsers_only(patch: pytest.MonkeyPatch) -> None:
    """Every record split and parsed in Python, its values stored through the column
    types: neither the scanner nor ``RowPattern``'s text."""
    patch.setattr(csv_copy, "_fastcsv", None)
    patch.setattr(RowPattern, "build", classmethod(lambda cls, *args: None))


DIALECTS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def file_text(records: list[str], crlf: bool) -> str:
    end = "\r\n" if crlf else "\n"
    return ",".join(HEADER) + end + "".join(r + end for r in records)


@pytest.mark.parametrize("dialect", DIALECTS)
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(RECORDS, max_size=12), min_size=1, max_size=3), st.booleans())
def test_loads_end_as_they_end_in_python(tmp_path_factory: pytest.TempPathFactory,
                                         monkeypatch: pytest.MonkeyPatch, dialect: str,
                                         files: list[list[str]], crlf: bool) -> None:
    """A first load and reloads of drawn files leave the same rows, hashes and rejects
    with the compiled path as with the parsers alone. On SQLite, the plain records' text
    is converted to stored values in Python, where the parsers' values go through the
    column types; both must store the same."""
    base = tmp_path_factory.mktemp("fast")
    states = []
    for compiled in (True, False):
        with monkeypatch.context() as patch:
            if not compiled:
                parsers_only(patch)
            directory = base / f"d{compiled}"
            directory.mkdir()
            with warehouse_on(dialect, directory / "warehouse.db") as wh:
                seen = []
                for records in files:
                    error = load(wh, directory, file_text(records, crlf))
                    seen.append((error, state(wh)))
                states.append(seen)
    assert states[0] == states[1]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_large_file_ends_as_it_ends_in_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                dialect: str) -> None:
    """Thousands of records over several read blocks, with a few quoted, multi-line,
    duplicate and bad ones among them, then a reload with some of them changed."""
    rng = random.Random(7)
    zones = ["", "Z", "+05:30", "-08:00", "+01:00"]

    def record(i: int) -> str:
        at = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:" \
             f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}{rng.choice(zones)}"
        plain = f"k{i},{at},{rng.randint(-999, 999)},{rng.randint(0, 9999) / 100:.2f},AUD," \
                f"2024-01-{rng.randint(1, 28):02d},note {i}"
        roll = rng.random()
        if roll < 0.01:
            return f'k{i},{at},1,1.00,AUD,2024-01-01,"quoted, {i}"'
        if roll < 0.015:
            return f'k{i},{at},1,1.00,AUD,2024-01-01,"two\nlines"'
        if roll < 0.02:
            return f"k{i // 2},{at},1,1.00,AUD,2024-01-01,duplicate"
        if roll < 0.025:
            return f"k{i},{at},x,1.00,AUD,2024-01-01,bad"
        return plain

    first = [record(i) for i in range(6000)]
    second = [r.replace("note 1", "changed 1") if i % 7 == 0 else r
              for i, r in enumerate(first)][:-300]
    monkeypatch.setattr(csvfile, "_BLOCK", 4096)
    taken = []
    build = RowPattern.scanner

    class Counted:
        """The scanner, counting the records it takes."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def scan(self, *args: Any) -> Any:
            found = self.inner.scan(*args)
            taken.append(found[2])
            return found

    monkeypatch.setattr(RowPattern, "scanner", lambda *a: Counted(build(*a)))
    states = []
    for compiled in (True, False):
        with monkeypatch.context() as patch:
            if not compiled:
                parsers_only(patch)
            directory = tmp_path / f"d{compiled}"
            directory.mkdir()
            with warehouse_on(dialect, directory / "warehouse.db") as wh:
                assert load(wh, directory, file_text(first, False)) is None
                after_first = state(wh)
                assert load(wh, directory, file_text(second, True)) is None
                states.append((after_first, state(wh)))
    assert states[0] == states[1]
    assert sum(taken) > 2 * 5000  # most records of both loads took the compiled path
    rows, rejects = states[0][1]
    assert not all(live for *_, live in rows)  # the last 300 records are gone
    assert {reason for _, _, reason, _ in rejects} == {"duplicate_key", "bad_n"}


@pytest.mark.postgres
def test_a_nul_character_fails_the_file_naming_its_line(tmp_path: Path) -> None:
    """NUL is not text (PostgreSQL cannot store it): like bad UTF-8, it fails the file,
    naming the line, before any record is read, and the loaded rows stay as they were."""
    good = ["k1,2024-03-01,1,,,,x", "k2,2024-03-01,2,,,,y"]
    with warehouse_on("postgresql", tmp_path / "unused.db") as wh:
        assert load(wh, tmp_path, file_text(good, False)) is None
        before = state(wh)
        error = load(wh, tmp_path, file_text([*good, "k3,2024-03-01,3,,,,z\x00"], False))
        assert error is not None and "events_a.csv line 4: a NUL character" in error
        assert state(wh) == before
