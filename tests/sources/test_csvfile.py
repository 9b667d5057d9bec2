"""Tests for the streaming CSV reader and field parsers in loader.sources.csvfile."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from dateutil.parser import isoparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loader.sources.csvfile as csvfile
from loader.sources.csvfile import (
    CsvFormatError,
    Record,
    iter_records,
    parse_code,
    parse_date,
    parse_decimal,
    parse_int,
    parse_timestamp,
    read_header,
    record_hash,
    validate_identifier,
)

BOM = "\ufeff"
_FILE_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _write(tmp_path: Path, data: bytes | str, name: str = "data.csv") -> Path:
    """Write ``data`` (str as UTF-8) to a file under tmp_path and return its path."""
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- iter_records: property test against files written by the csv module -------------------

_SPECIAL = st.sampled_from([",", '"', "\n", "\r", " ", "\t", '""', "\r\n", "\u2028", "\x00"])
_CHAR = st.characters(codec="utf-8", exclude_characters=BOM)
_FIELD = st.lists(st.one_of(_SPECIAL, _CHAR), max_size=6).map("".join)
_TABLE = st.integers(1, 4).flatmap(
    lambda width: st.lists(st.lists(_FIELD, min_size=width, max_size=width), max_size=8)
)
_BLANKS = st.lists(st.sampled_from(["", " ", "\t", " \t  "]), max_size=2)


@_FILE_SETTINGS
@given(
    table=_TABLE,
    terminator=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    final_line_end=st.booleans(),
    data=st.data(),
)
def test_records_round_trip_csv_writer_output(
    tmp_path: Path,
    table: list[list[str]],
    terminator: str,
    bom: bool,
    final_line_end: bool,
    data: st.DataObject,
) -> None:
    """Records written by csv.writer come back with stripped fields, start lines and raw text.

    Blank lines between records are skipped, and a record whose text is only whitespace
    (a one-column row of spaces) counts as a blank line.
    """
    pieces: list[tuple[str, list[str] | None]] = []
    for row in table:
        for blank in data.draw(_BLANKS):
            pieces.append((blank + terminator, None))
        out = io.StringIO()
        csv.writer(out, lineterminator=terminator).writerow(row)
        pieces.append((out.getvalue(), row))
    if pieces and not final_line_end:
        last_text, last_row = pieces[-1]
        pieces[-1] = (last_text.removesuffix(terminator), last_row)

    expected: list[Record] = []
    written = ""
    for text, written_row in pieces:
        raw = text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")
        if written_row is not None and raw.strip():
            line = written.count("\n") + 1
            expected.append(Record(line, raw, [field.strip() for field in written_row]))
        written += text
    path = _write(tmp_path, (BOM if bom else "") + written)

    assert list(iter_records(path)) == expected


_QUOTED_TEXT = st.lists(st.sampled_from(list('ab ,"\t\x00é')), max_size=20).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.builds(lambda head, tail: f'{head}"{tail}', _QUOTED_TEXT, _QUOTED_TEXT))
def test_hand_splitter_agrees_with_csv_module(text: str) -> None:
    """On newline-free text with a quote, the fallback splitter matches the csv module."""
    expected = next(csv.reader([text], skipinitialspace=True), [""])
    assert csvfile._split_by_hand(text) == expected


# --- iter_records: edge cases ---------------------------------------------------------------


def test_multiline_record_keeps_inner_line_ends(tmp_path: Path) -> None:
    """A quoted field spanning lines keeps its LF/CRLF inside raw and the field text."""
    path = _write(tmp_path, 'id,note\r\n1,"two\r\nlines\nhere"\r\n2,x\n')
    assert list(iter_records(path)) == [
        Record(1, "id,note", ["id", "note"]),
        Record(2, '1,"two\r\nlines\nhere"', ["1", "two\r\nlines\nhere"]),
        Record(5, "2,x", ["2", "x"]),
    ]


def test_fields_are_stripped_and_quotes_unescaped(tmp_path: Path) -> None:
    """Surrounding whitespace goes, commas and doubled quotes inside quotes survive."""
    path = _write(tmp_path, ' a , "b, ""c""" ,  "  d "\n')
    (record,) = iter_records(path)
    assert record.fields == ["a", 'b, "c"', "d"]
    assert record.raw == ' a , "b, ""c""" ,  "  d "'


def test_blank_and_whitespace_lines_are_skipped(tmp_path: Path) -> None:
    """Empty and whitespace-only lines yield nothing but still count for line numbers."""
    path = _write(tmp_path, "\n  \r\nh1,h2\n\t\n\n1,2\r\n   ")
    assert [(r.line, r.fields) for r in iter_records(path)] == [
        (3, ["h1", "h2"]),
        (6, ["1", "2"]),
    ]


def test_bom_is_stripped_only_at_file_start(tmp_path: Path) -> None:
    """A leading UTF-8 BOM is dropped from the first field and the first raw text."""
    path = _write(tmp_path, BOM + "name,qty\n")
    assert list(iter_records(path)) == [Record(1, "name,qty", ["name", "qty"])]


def test_unterminated_quote_yields_rest_of_file_as_one_record(tmp_path: Path) -> None:
    """An odd quote never closed makes the rest of the file one record, without raising."""
    path = _write(tmp_path, 'a,b\n1,"open\n2,3\n')
    assert list(iter_records(path)) == [
        Record(1, "a,b", ["a", "b"]),
        Record(2, '1,"open\n2,3', ["1", "open\n2,3"]),
    ]


def test_quote_inside_an_unquoted_field_is_data(tmp_path: Path) -> None:
    """A quote opens a quoted field only at the start of a field; elsewhere it is a
    character of the field and never joins lines."""
    path = _write(tmp_path, 'a"b,c\nd,e"\nf,27" screen\n')
    assert list(iter_records(path)) == [
        Record(1, 'a"b,c', ['a"b', "c"]),
        Record(2, 'd,e"', ["d", 'e"']),
        Record(3, 'f,27" screen', ["f", '27" screen']),
    ]


def test_bare_carriage_return_is_data_not_a_line_end(tmp_path: Path) -> None:
    """A CR not followed by LF stays inside the field, also in records with quotes."""
    path = _write(tmp_path, 'x\ry,"q"\nnext,row\n')
    assert list(iter_records(path)) == [
        Record(1, 'x\ry,"q"', ["x\ry", "q"]),
        Record(2, "next,row", ["next", "row"]),
    ]


def test_invalid_utf8_names_the_physical_line(tmp_path: Path) -> None:
    """Bad UTF-8 raises CsvFormatError carrying the path and the line it is on."""
    path = _write(tmp_path, b'h1,h2\n1,"multi\nline \xff"\n', name="sales_north.csv")
    with pytest.raises(CsvFormatError) as info:
        list(iter_records(path))
    assert isinstance(info.value, ValueError)
    assert info.value.path == path
    assert info.value.line == 3
    assert str(info.value) == "sales_north.csv line 3: not valid UTF-8"


def test_read_header_returns_first_record_or_none(tmp_path: Path) -> None:
    """read_header gives the first record, and None for an empty or blank-only file."""
    assert read_header(iter_records(_write(tmp_path, "a,b\n1,2\n"))) == Record(1, "a,b", ["a", "b"])
    assert read_header(iter_records(_write(tmp_path, ""))) is None
    assert read_header(iter_records(_write(tmp_path, BOM + "\n \n"))) is None


# --- record_hash ---------------------------------------------------------------------------


def test_record_hash_is_a_signed_64_bit_keyed_hash() -> None:
    """The hash fits a BIGINT, depends on the salt and text, and never changes."""
    value = record_hash("a,b", b"salt")
    assert value == -213449942793539034
    assert -(2**63) <= record_hash("x" * 1000, b"k") < 2**63
    assert record_hash("a,b", b"pepper") != value
    assert record_hash("a,c", b"salt") != value


def test_record_hash_is_stable_in_another_process() -> None:
    """A fresh interpreter with a different hash seed computes the same value."""
    root = Path(csvfile.__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    code = "from loader.sources.csvfile import record_hash; print(record_hash('é,ü', b'k'))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(result.stdout) == record_hash("é,ü", b"k")


# --- parse_timestamp -----------------------------------------------------------------------


def _reference_timestamp(text: str) -> datetime | None:
    """isoparse converted to naive UTC, or None when isoparse or the conversion fails."""
    try:
        value = isoparse(text)
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
    except Exception:
        return None
    return value


def _ours(text: str) -> datetime | None:
    """parse_timestamp's answer, or None when it raises ValueError."""
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


_OFFSET = st.from_regex(r"\A[+-](?:[01][0-9]|2[0-5]):(?:[0-5][0-9]|6[01])\Z")


@st.composite
def _common_timestamps(draw: st.DrawFn) -> str:
    """A valid datetime written in one of the fast-path shapes, sometimes a bit off."""
    value = draw(st.datetimes())
    text = value.date().isoformat()
    shape = draw(st.sampled_from(["date", "minute", "second", "fraction"]))
    if shape == "date":
        return text
    hour = draw(st.sampled_from([f"{value.hour:02d}", "24"]))
    text += draw(st.sampled_from("T ")) + f"{hour}:{value.minute:02d}"
    if shape != "minute":
        text += f":{value.second:02d}"
    if shape == "fraction":
        text += "." + f"{value.microsecond:06d}"[: draw(st.integers(1, 6))]
    return text + draw(st.one_of(st.just(""), st.just("Z"), _OFFSET))


_NEAR_MISS = st.one_of(
    st.from_regex(
        r"\A[0-9]{4}-[01][0-9]-[0-3][0-9]([Tt _][0-2][0-9](:[0-6][0-9]){0,2}"
        r"([.,][0-9]{0,8})?)?([Zz]|[+-][0-2][0-9](:?[0-6][0-9])?)?\Z"
    ),
    st.from_regex(r"\A[0-9]{1,5}-?[0-9W]{1,3}-?[0-9]{0,3}([T ][0-9:]{1,9})?\Z"),
    st.text(alphabet=st.sampled_from(list("0123456789-:T .,+Zz")), max_size=28),
    st.text(max_size=12),
)


@settings(max_examples=600, deadline=None)
@given(_common_timestamps())
def test_timestamp_matches_isoparse_on_common_shapes(text: str) -> None:
    """For the shapes of the fast path, the result (or the failure) is isoparse's."""
    assert _ours(text) == _reference_timestamp(text)


@settings(max_examples=600, deadline=None)
@given(_NEAR_MISS)
def test_timestamp_matches_isoparse_on_near_misses(text: str) -> None:
    """For slightly wrong shapes and arbitrary text, the result (or failure) is isoparse's."""
    assert _ours(text) == _reference_timestamp(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01", datetime(2024, 3, 1)),
        ("2024-03-01 10:15", datetime(2024, 3, 1, 10, 15)),
        ("2024-03-01T10:15:30.5Z", datetime(2024, 3, 1, 10, 15, 30, 500000)),
        ("2024-03-01T00:30+01:00", datetime(2024, 2, 29, 23, 30)),
        ("2024-03-01T10:00-00:00", datetime(2024, 3, 1, 10, 0)),
        ("2024-03-01T24:00", datetime(2024, 3, 2)),
        ("2024-03-01T10:00z", datetime(2024, 3, 1, 10, 0)),
        ("2024-03-01t10:00", datetime(2024, 3, 1, 10, 0)),
        ("20240301T1015", datetime(2024, 3, 1, 10, 15)),
        ("2024-W09-5", datetime(2024, 3, 1)),
        ("2024-061", datetime(2024, 3, 1)),
        ("2024-03-01T10:15:30,25", datetime(2024, 3, 1, 10, 15, 30, 250000)),
        ("2024-03-01T10:15:30.1234567", datetime(2024, 3, 1, 10, 15, 30, 123456)),
        ("2024-03-01T10:00+0530", datetime(2024, 3, 1, 4, 30)),
    ],
)
def test_timestamp_accepts(text: str, expected: datetime) -> None:
    """Fast-path shapes and isoparse-only shapes parse to the expected naive UTC value."""
    result = parse_timestamp(text)
    assert result == expected
    assert result.tzinfo is None


_BAD_TIMESTAMPS = [
    *["", "2024-03-01Z", "2024-03-01T10:00 ", "\uff12\uff10\uff12\uff14-03-01"],
    *["0000-01-01", "2024-02-30", "2024-03-01T24:01", "2024-03-01T10:60"],
    *["2024-03-01T10:00+05:60", "2024-03-01T10:00+24:00"],
    *["9999-12-31T24:00", "9999-12-31T23:30-01:00", "0001-01-01T00:30+01:00"],
]


@pytest.mark.parametrize("text", _BAD_TIMESTAMPS)
def test_timestamp_rejects_with_value_error(text: str) -> None:
    """Invalid text, impossible values and results out of range in UTC raise ValueError."""
    with pytest.raises(ValueError):
        parse_timestamp(text)


# --- scalar parsers ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("-12", -12), ("+7", 7), ("007", 7)])
def test_parse_int_accepts_plain_integers(text: str, expected: int) -> None:
    """Optionally signed ASCII digit strings parse to int."""
    assert parse_int(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "+", "-", "1_000", " 1", "1 ", "1.0", "1e3", "0x10", "\u0661\u0662", "\u00b2", "1\n"],
)
def test_parse_int_rejects_everything_else(text: str) -> None:
    """Underscores, spaces, decimals, exponents and non-ASCII digits are rejected."""
    with pytest.raises(ValueError):
        parse_int(text)


@given(st.integers(-(10**30), 10**30))
def test_parse_int_round_trips(value: int) -> None:
    """Any integer written with str() reads back unchanged."""
    assert parse_int(str(value)) == value


def test_parse_decimal_keeps_text_precision() -> None:
    """Decimals up to the place limit parse as written, without quantizing.

    Zero places allows integers only; negative places is a configuration error.
    """
    parse = parse_decimal(2)
    assert str(parse("10.00")) == "10.00"
    assert str(parse("1.5")) == "1.5"
    assert parse("-0.25") == Decimal("-0.25")
    assert parse("+3") == Decimal(3)
    assert parse_decimal(0)("42") == Decimal(42)
    with pytest.raises(ValueError):
        parse_decimal(0)("1.0")
    with pytest.raises(ValueError):
        parse_decimal(-1)


@pytest.mark.parametrize(
    "text", ["", "1.", ".5", "1.234", "1,5", "1e2", "NaN", "Infinity", " 1", "\u0661.5", "1.5\n"]
)
def test_parse_decimal_rejects_other_shapes(text: str) -> None:
    """Too many places, missing digits, exponents, specials and non-ASCII are rejected."""
    with pytest.raises(ValueError):
        parse_decimal(2)(text)


def test_parse_code_uppercases_exact_length_letters() -> None:
    """Codes of the configured number of ASCII letters come back upper case."""
    parse = parse_code(3)
    assert parse("usd") == "USD"
    assert parse("EuR") == "EUR"
    for bad in ["", "US", "USDD", "U5D", "\u00dcSD", "US ", "\ufb00x"]:
        with pytest.raises(ValueError):
            parse(bad)
    with pytest.raises(ValueError):
        parse_code(0)


def test_parse_date_accepts_only_iso_calendar_dates() -> None:
    """Only YYYY-MM-DD naming a real day parses; other shapes raise ValueError."""
    assert parse_date("2024-02-29") == date(2024, 2, 29)
    assert parse_date("0001-01-01") + timedelta(days=1) == date(1, 1, 2)
    for bad in [
        *["", "2023-02-29", "0000-01-01", "2024-2-29", "20240229", "2024-W09-4"],
        *["2024-02-29T00:00", "\uff12\uff10\uff12\uff14-02-29", "2024-02-29\n"],
    ]:
        with pytest.raises(ValueError):
            parse_date(bad)


# --- identifiers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "Sales_2024", "x_", "A" + "b" * 47])
def test_validate_identifier_accepts_safe_names(name: str) -> None:
    """Names of letters, digits and underscores starting with a letter are returned."""
    assert validate_identifier(name, what="column name") == name


@pytest.mark.parametrize(
    "name", ["", "1a", "_a", "a b", "a-b", "a" * 49, "é", "a\n", 'a"', "a;drop", "\uff41"]
)
def test_validate_identifier_rejects_unsafe_names(name: str) -> None:
    """Anything else raises ValueError naming the identifier and saying what is allowed."""
    with pytest.raises(ValueError) as info:
        validate_identifier(name, what="column name")
    assert str(info.value) == (
        f"column name {name!r} is not allowed: use letters, digits and _ "
        "(starting with a letter, at most 48 characters)"
    )


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from(["a", "b", ",", '"', "\n", "\r", " ", "é", "\r\n"]),
                     max_size=40).map("".join),
       bom=st.booleans(), block=st.integers(1, 8))
def test_records_do_not_depend_on_the_read_size(tmp_path: Path, text: str, bom: bool,
                                                block: int, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """Reading in blocks of a few bytes finds the same records as one block for the file."""
    path = tmp_path / "f.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    whole = list(csvfile.iter_raw(path))
    with monkeypatch.context() as patch:
        patch.setattr(csvfile, "_BLOCK", block)
        assert list(csvfile.iter_raw(path)) == whole
