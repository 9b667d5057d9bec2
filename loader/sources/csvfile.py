"""Streaming CSV reading and field parsing for source files.

The reader is built for files of millions of rows: it reads line by line, splits records
without quotes with plain ``str.split`` and hands only quoted records to the ``csv`` module.
Every record keeps its starting line number and its exact text, so that rejected rows can be
reported precisely and hashed for change tracking.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from dateutil.parser import isoparse

from loader.coltypes import places_of

__all__ = [
    "BOM",
    "CopyText",
    "CsvFormatError",
    "Record",
    "copy_text_of",
    "iter_records",
    "parse_code",
    "parse_date",
    "parse_decimal",
    "parse_int",
    "parse_timestamp",
    "read_header",
    "record_hash",
    "record_hasher",
    "validate_identifier",
]

BOM = b"\xef\xbb\xbf"


class CsvFormatError(ValueError):
    """A source file that cannot be read as CSV at all (as opposed to one bad record)."""

    def __init__(self, path: Path, line: int, message: str) -> None:
        super().__init__(f"{path.name} line {line}: {message}")
        self.path = path
        self.line = line
        self.message = message


@dataclass(frozen=True, slots=True)
class Record:
    """One logical CSV record: where it starts, its exact text and its parsed fields."""

    line: int
    raw: str
    fields: list[str]


def _without_line_end(line: str) -> str:
    """Drop one final LF or CRLF, keeping any other carriage return as data."""
    if line.endswith("\r\n"):
        return line[:-2]
    if line.endswith("\n"):
        return line[:-1]
    return line


def _split_by_hand(text: str) -> list[str]:
    """Split a quoted record the way the ``csv`` module does, but with line ends as data.

    Only used when the ``csv`` module gives up, e.g. on a bare CR outside quotes or on
    text swallowed by a stray quote; such records are rejected later by their field count.
    """
    fields: list[str] = []
    chars: list[str] = []
    state = "start"
    for char in text:
        if state == "quoted":
            if char == '"':
                state = "quote_in_quoted"
            else:
                chars.append(char)
        elif char == ",":
            fields.append("".join(chars))
            chars = []
            state = "start"
        elif state == "start" and char == '"':
            state = "quoted"
        elif state == "start" and char == " ":
            continue
        elif state == "quote_in_quoted" and char == '"':
            chars.append('"')
            state = "quoted"
        else:
            chars.append(char)
            state = "unquoted"
    fields.append("".join(chars))
    return fields


def _inside_quotes(text: str, inside: bool) -> bool:
    """Whether a quoted field is still open after ``text``, given whether one was before.

    A quote opens a quoted field only at the start of a field (after optional spaces);
    elsewhere it is data, as the ``csv`` module reads it.
    """
    at_start = not inside
    quote_pending = False
    for char in text:
        if inside:
            if quote_pending:
                quote_pending = False
                if char == '"':
                    continue
                inside = False
            elif char == '"':
                quote_pending = True
                continue
            else:
                continue
        if char == ",":
            at_start = True
        elif at_start and char == '"':
            inside, at_start = True, False
        elif not (at_start and char == " "):
            at_start = False
    return inside and not quote_pending


def _split_quoted(text: str) -> list[str]:
    """Parse a record containing quotes into stripped fields."""
    try:
        row = next(csv.reader([text], skipinitialspace=True), [""])
    except csv.Error:
        row = _split_by_hand(text)
    return [field.strip() for field in row]


_BLOCK = 1 << 22

# Takes the plain lines of a block from a byte position: ``fast(data, pos, lines_before)``
# returns where it stopped and how many lines precede that point (see ``iter_raw``).
Fast = Callable[[bytes, int, int], tuple[int, int]]


def _blocks(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """The file as blocks of whole lines: (lines before the block, bytes, last).

    A block ends just after a line feed, except the last one, which holds whatever
    follows the final line feed (possibly nothing). A byte order mark is dropped.
    """
    with path.open("rb") as stream:
        carry = stream.read(len(BOM))
        if carry == BOM:
            carry = b""
        before = 0
        while True:
            block = stream.read(_BLOCK)
            data = carry + block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:
                    carry = data
                    continue
                data, carry = data[:cut], data[cut:]
            yield before, data, not block
            if not block:
                return
            before += data.count(b"\n")


def _decode(path: Path, data: bytes, first_line: int) -> str:
    """``data``, starting at line ``first_line``, as text; CsvFormatError names the line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        raise CsvFormatError(path, line, "not valid UTF-8") from exc


class _Records:
    """Joins the lines of a file into records, as ``iter_raw`` describes, passing over the
    first ``skip`` records."""

    __slots__ = ("pending", "skip", "start")

    def __init__(self, skip: int) -> None:
        self.pending: list[str] = []
        self.start = 0
        self.skip = skip

    def line(self, lineno: int, line: str) -> tuple[int, str] | None:
        """Take line ``lineno`` (without its line feed); the record it ends, if any."""
        record = self._line(lineno, line)
        if record is not None and self.skip:
            self.skip -= 1
            return None
        return record

    def _line(self, lineno: int, line: str) -> tuple[int, str] | None:
        if self.pending:
            self.pending.append(line + "\n")
            if _inside_quotes(line, True):
                return None
            record = self.start, _without_line_end("".join(self.pending))
            self.pending = []
            return record
        if '"' in line:
            if _inside_quotes(line, False):
                self.pending = [line + "\n"]
                self.start = lineno
                return None
            return lineno, line[:-1] if line.endswith("\r") else line
        if line.endswith("\r"):
            line = line[:-1]
        if not line or line.isspace():
            return None
        return lineno, line

    def end(self, lineno: int, tail: str) -> tuple[int, str] | None:
        """The last record, given the text after the final line feed (line ``lineno + 1``)."""
        if self.skip:
            return None
        if self.pending:
            return self.start, _without_line_end("".join(self.pending) + tail)
        if tail and ('"' in tail or not tail.isspace()):
            return lineno + 1, tail
        return None


def iter_raw(path: Path, *, skip: int = 0,
             fast: Fast | None = None) -> Generator[tuple[int, str], None, None]:
    """Yield each record of a UTF-8 CSV file as (starting line, raw text), skipping blank lines.

    Lines end at a line feed; one carriage return before it belongs to the line end. A
    record continues onto the next line while it holds an odd number of quotes; an
    unterminated quote at the end of the file yields the rest of the file as one record.
    Raises CsvFormatError naming the line when the file is not valid UTF-8.

    The first ``skip`` records are read but not yielded. After them, ``fast`` (when given)
    is offered the bytes of each line that starts a record: it takes as many lines as it
    can, and their records are not yielded; the lines it leaves are read here.
    """
    records = _Records(skip)
    if fast is not None:
        yield from _with_fast(path, records, fast)
        return
    for before, data, last in _blocks(path):
        lines = _decode(path, data, before + 1).split("\n")
        # Every piece but the last ended with a line feed. The last piece is empty, or
        # (in the last block only) a final line without a line feed.
        tail = lines.pop()
        lineno = before
        for line in lines:
            lineno += 1
            record = records.line(lineno, line)
            if record is not None:
                yield record
        if last:
            record = records.end(lineno, tail)
            if record is not None:
                yield record


def _with_fast(path: Path, records: _Records, fast: Fast) -> Iterator[tuple[int, str]]:
    """``iter_raw`` with ``fast`` taking what lines it can."""
    for before, data, last in _blocks(path):
        pos, lineno = 0, before
        while True:
            if not records.skip and not records.pending:
                pos, lineno = fast(data, pos, lineno)
            end = data.find(b"\n", pos)
            if end < 0:
                break
            lineno += 1
            record = records.line(lineno, _decode(path, data[pos:end], lineno))
            pos = end + 1
            if record is not None:
                yield record
        if last:
            record = records.end(lineno, _decode(path, data[pos:], lineno + 1))
            if record is not None:
                yield record


def split_fields(text: str) -> list[str]:
    """The stripped fields of one record's raw text."""
    if '"' in text:
        return _split_quoted(text)
    return [field.strip() for field in text.split(",")]


def iter_records(path: Path) -> Iterator[Record]:
    """Yield the records of a UTF-8 CSV file one at a time, skipping blank lines.

    See ``iter_raw`` for how records and lines are found.
    """
    for line, text in iter_raw(path):
        yield Record(line, text, split_fields(text))


def read_header(records: Iterator[Record]) -> Record | None:
    """Return the first record (the header), or None for a file without records."""
    return next(records, None)


def record_hash(raw: str, salt: bytes) -> int:
    """Hash a record's text to a signed 64-bit integer that fits a BIGINT column.

    Keyed BLAKE2b is stable across processes and Python versions, unlike ``hash()``.
    """
    return record_hasher(salt)(raw)


def record_hasher(salt: bytes) -> Callable[[str], int]:
    """``record_hash`` with ``salt`` bound, preparing the keyed hash once."""
    prepared = hashlib.blake2b(digest_size=8, key=salt)
    to_int = int.from_bytes

    def hash_record(raw: str) -> int:
        hasher = prepared.copy()
        hasher.update(raw.encode("utf-8"))
        return to_int(hasher.digest(), "big", signed=True)

    return hash_record


# The forms that datetime.fromisoformat reads exactly as isoparse does, with the zone (if any)
# in group 1. Everything else, including hour 24, offset minutes of 60 or more and lower-case
# separators, goes to isoparse.
_TIMESTAMP_FAST = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
    r"(Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?)?"
)
# Zone text to UTC offset; the regex above bounds it to 2 * 24 * 60 + 1 entries.
_OFFSETS: dict[str, timedelta] = {"Z": timedelta(0)}


def _offset(zone: str) -> timedelta:
    """Return the UTC offset of a ``Z`` or ``±HH:MM`` zone matched by _TIMESTAMP_FAST."""
    offset = _OFFSETS.get(zone)
    if offset is None:
        minutes = int(zone[1:3]) * 60 + int(zone[4:6])
        offset = _OFFSETS[zone] = timedelta(minutes=-minutes if zone[0] == "-" else minutes)
    return offset


def _out_of_range(text: str) -> ValueError:
    """The error for a timestamp that is valid but cannot be expressed in UTC."""
    return ValueError(f"timestamp out of range in UTC: {text!r}")


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 timestamp to naive UTC, exactly as ``dateutil.parser.isoparse``.

    Common shapes take a fast path through ``datetime.fromisoformat``; anything else, and
    anything the fast path rejects, is decided by isoparse itself so the two never differ.
    Subtracting the offset from the local time is what ``astimezone(UTC)`` does for fixed
    offsets, without the cost of aware datetimes.
    """
    match = _TIMESTAMP_FAST.fullmatch(text)
    if match is not None:
        zone_at = match.start(1)
        try:
            local = datetime.fromisoformat(text if zone_at < 0 else text[:zone_at])
        except ValueError:
            pass
        else:
            if zone_at < 0:
                return local
            try:
                return local - _offset(text[zone_at:])
            except OverflowError as exc:
                raise _out_of_range(text) from exc
    try:
        value = isoparse(text)
    except Exception as exc:  # isoparse raises ValueError and, for some dates, OverflowError
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}") from exc
    if value.tzinfo is None:
        return value
    try:
        return value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError as exc:
        raise _out_of_range(text) from exc


_INT = re.compile(r"[+-]?[0-9]+")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True)
class CopyText:
    """Text that a parser accepts and PostgreSQL reads, as it is, to the parser's value.

    ``pattern`` is a regular expression without capturing groups that matches only such
    text; ``accepts(type_name)`` tells for which column types that holds. A timestamp's
    ``zone`` pattern may follow it: PostgreSQL's ``timestamp`` input ignores a zone, so the
    loader converts zoned text to UTC itself. Text the pattern does not match is parsed in
    Python as usual; the pattern only lets the common shapes skip that work. ``kind`` names
    the same shape, with its size, for the compiled scanner (``loader._fastcsv``).
    """

    pattern: str
    accepts: Callable[[str], bool]
    kind: tuple[str, int]
    zone: str | None = None


# Only dates that exist: day 29 of February is left to the parser.
_DATE_TEXT = (r"(?!0000)[0-9]{4}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
              r"|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)")
_TIME_TEXT = r"(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_ZONE_TEXT = r"Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9]"
# Fifteen digits before the point fit every decimal:N column with N up to 13.
_DECIMAL_DIGITS = 15


def copy_text_of(parse: Callable[[str], object] | None) -> CopyText | None:
    """The ``CopyText`` of one of this module's parsers (None: plain text), else None."""
    if parse is None:
        return _PLAIN_TEXT
    form = getattr(parse, "copy_text", None)
    return form if isinstance(form, CopyText) else None


def _any_type(_: str) -> bool:
    return True


def _fits_decimal(type_name: str) -> bool:
    """A decimal column that holds every value of ``_DECIMAL_DIGITS`` integer digits."""
    if type_name == "decimal":
        return True
    places = places_of(type_name) if type_name.startswith("decimal:") else None
    return places is not None and places <= 28 - _DECIMAL_DIGITS


# What ``str.strip`` leaves: no white space at either end. Quotes, commas, backslashes and
# line ends (which COPY's text format would need escaped) are left to the slow path.
_PLAIN_TEXT = CopyText(r'[^\s",\\\x00](?:[^",\\\t\r\n\x00]*[^\s",\\\x00])?', _any_type,
                       ("text", 0))


def parse_int(text: str) -> int:
    """Parse a plain ASCII integer such as ``-42``; no spaces, underscores or decimals."""
    if _INT.fullmatch(text) is None:
        raise ValueError(f"not an integer: {text!r}")
    return int(text)


# At most 18 digits: always inside a 64-bit integer.
parse_int.copy_text = CopyText(  # type: ignore[attr-defined]
    r"[+-]?[0-9]{1,18}", lambda t: t == "integer", ("integer", 0))


def parse_decimal(places: int) -> Callable[[str], Decimal]:
    """Make a parser for plain decimals with at most ``places`` digits after the point."""
    if places < 0:
        raise ValueError(f"decimal places must not be negative, got {places}")
    fraction = rf"(?:\.[0-9]{{1,{places}}})?" if places else ""
    pattern = re.compile(rf"[+-]?[0-9]+{fraction}")

    def parse(text: str) -> Decimal:
        """Parse ``text`` as a decimal with at most the configured places."""
        if pattern.fullmatch(text) is None:
            raise ValueError(f"not a decimal with at most {places} places: {text!r}")
        return Decimal(text)

    fraction_text = rf"(?:\.[0-9]{{1,{places}}})?" if places else ""
    parse.copy_text = CopyText(  # type: ignore[attr-defined]
        rf"[+-]?[0-9]{{1,{_DECIMAL_DIGITS}}}{fraction_text}", _fits_decimal,
        ("decimal", places))
    return parse


def parse_code(length: int) -> Callable[[str], str]:
    """Make a parser for codes of exactly ``length`` ASCII letters, returned in upper case."""
    if length < 1:
        raise ValueError(f"code length must be positive, got {length}")
    pattern = re.compile(rf"[A-Za-z]{{{length}}}")

    def parse(text: str) -> str:
        """Parse ``text`` as a code of the configured length."""
        if pattern.fullmatch(text) is None:
            raise ValueError(f"not a code of {length} letters: {text!r}")
        return text.upper()

    parse.copy_text = CopyText(  # type: ignore[attr-defined]
        rf"[A-Z]{{{length}}}", _any_type, ("code", length))
    return parse


def parse_date(text: str) -> date:
    """Parse a calendar date written exactly as ``YYYY-MM-DD``."""
    if _DATE.fullmatch(text) is None:
        raise ValueError(f"not a date (YYYY-MM-DD): {text!r}")
    return date.fromisoformat(text)


parse_date.copy_text = CopyText(  # type: ignore[attr-defined]
    _DATE_TEXT, lambda t: t == "date", ("date", 0))
parse_timestamp.copy_text = CopyText(  # type: ignore[attr-defined]
    rf"{_DATE_TEXT}(?:[T ]{_TIME_TEXT})?", lambda t: t == "timestamp", ("timestamp", 0),
    zone=_ZONE_TEXT)


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")


def validate_identifier(name: str, *, what: str) -> str:
    """Return ``name`` if it is safe to use as an SQL identifier, else raise ValueError.

    ``what`` names the kind of identifier (e.g. "column name") in the error message.
    """
    if _IDENTIFIER.fullmatch(name) is None:
        raise ValueError(
            f"{what} {name!r} is not allowed: use letters, digits and _ "
            "(starting with a letter, at most 48 characters)"
        )
    return name
