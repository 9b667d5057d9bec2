"""Records of a CSV file as lines of PostgreSQL's COPY text format.

Most records of a real file have one shape: no quotes, each field already in a form
that PostgreSQL reads to the value the field's parser would give. ``RowPattern``
matches such a record with one regular expression and passes its fields through as
text, so the server does the conversion in C; every other record (quoted, padded,
unusual, bad) is parsed field by field in Python and formatted with ``copy_text``.
Either way the stored values are the parsers' values.

When the C extension ``loader._fastcsv`` is built, its ``Scanner`` takes the records
``RowPattern`` would take, whole blocks of lines at a time, and also hashes them and
checks their keys; it leaves every other line to the Python loop.

SQLite reads no COPY text: ``SqliteValues`` turns the same text into the values SQLite
stores for the parsed values, so that plain records skip the parsers there too.
"""

from __future__ import annotations

import array
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from operator import itemgetter
from typing import Any, Protocol

from loader.sources.csvfile import copy_text_of

try:
    from loader import _fastcsv
except ImportError:  # built without a C compiler: every record goes through Python
    _fastcsv = None  # type: ignore[assignment]

# Whether the compiled path (``loader._fastcsv``) is built.
COMPILED = _fastcsv is not None
NULL = "\\N"


class HashSet(Protocol):
    """The stored row hashes of a partition: a ``set`` of ints, or the compiled one."""

    def __contains__(self, value: object, /) -> bool: ...
    def __iter__(self) -> Iterator[int]: ...
    def __len__(self) -> int: ...
    def discard(self, value: int, /) -> None: ...


def hashes(values: Iterable[int] = ()) -> HashSet:
    """A set of row hashes: the compiled one when it is built, else a ``set``."""
    return set(values) if _fastcsv is None else _fastcsv.Hashes(values)


class KeyLines(Protocol):
    """The first line of each key one load staged, as a dict of key to line would hold it."""

    def add(self, key: Any, line: int, /) -> int | None:
        """The line of ``key`` if it has one; else None, and ``key`` now has ``line``."""

    def line_of(self, key: Any, /) -> int:
        """The line of ``key``; KeyError if it has none."""

    def __len__(self) -> int: ...


class _DictKeyLines(dict[Any, int]):
    """``KeyLines`` as a dict, where ``loader._fastcsv`` is not built."""

    def add(self, key: Any, line: int) -> int | None:
        first = self.get(key)
        if first is None:
            self[key] = line
        return first

    def line_of(self, key: Any) -> int:
        return self[key]


def key_lines(expected: int = 0) -> KeyLines:
    """An empty ``KeyLines`` with room for ``expected`` keys: the compiled one when it is
    built, which keeps a key of text in about 20 bytes (most of a keyed 128-bit digest of
    the key, and the line) where a dict takes about 115."""
    if _fastcsv is None:
        return _DictKeyLines()
    return _fastcsv.KeyLines(os.urandom(16), expected)


def hashes_to_bytes(*parts: Iterable[int]) -> bytes:
    """The hashes of ``parts``, one after another, as :func:`hashes_from_bytes` reads them."""
    packed = array.array("q")
    for part in parts:
        packed.extend(part)
    if sys.byteorder == "little":
        packed.byteswap()
    return packed.tobytes()


def hashes_from_bytes(data: bytes) -> HashSet:
    """The hashes in ``data``, 8 bytes each, big-endian (PostgreSQL's ``int8send``)."""
    if _fastcsv is None:
        values = array.array("q", data)
        if sys.byteorder == "little":
            values.byteswap()
        return set(values)
    return _fastcsv.Hashes.from_bytes(data)


_SPECIAL = re.compile(r"[\\\t\n\r]")
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def escape(text: str) -> str:
    """``text`` as one field of COPY's text format."""
    if _SPECIAL.search(text) is None:
        return text
    return _SPECIAL.sub(lambda m: _ESCAPES[m.group()], text)


def copy_text(value: Any) -> str:
    """A parsed value as one field of COPY's text format, as psycopg would send it."""
    if value is None:
        return NULL
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(" ")
    if isinstance(value, date):
        return value.isoformat()
    return escape(str(value))


class NotFast(Exception):
    """A record that matched the pattern but still needs the parsers (rare)."""


@dataclass(frozen=True)
class Column:
    """One field of the file as the fast path sees it."""

    name: str
    parse: Any
    type: str
    nullable: bool
    key: bool


class RowPattern:
    """One regular expression for a whole plain record; None from ``build`` if unusable.

    ``fields(raw)`` returns the COPY text of the record's fields in ``order`` (names of
    the header), or None when the record has another shape. ``scanner`` gives the same
    for whole blocks of lines, compiled, when ``loader._fastcsv`` is built.
    """

    def __init__(self, regex: re.Pattern[str], order: list[int],
                 zones: list[tuple[int, int]], kinds: list[tuple[str, int, bool]],
                 positions: list[int]) -> None:
        self._match = regex.fullmatch
        self._pick = itemgetter(*order) if len(order) > 1 else (lambda g: (g[order[0]],))
        self._zones = zones
        self._utc: dict[str, str] = {}
        self.kinds = kinds
        self.positions = positions

    @classmethod
    def build(cls, header: Sequence[str], columns: dict[str, Column],
              order: Sequence[str]) -> RowPattern | None:
        """The pattern for a file with ``header``; ``columns`` by header name.

        Header names missing from ``columns`` are plain nullable text (extra columns).
        None when a field's parser has no COPY text form for its column type, or a key
        field needs its parser to compare keys (only plain text keys compare as text).
        """
        parts: list[str] = []
        group_of: dict[str, int] = {}
        zones: list[tuple[int, int]] = []
        kinds: list[tuple[str, int, bool]] = []
        groups = 0
        for name in header:
            column = columns.get(name)
            form = copy_text_of(column.parse if column else None)
            if form is None or (column is not None and not form.accepts(column.type)):
                return None
            if column is not None and column.key and column.parse is not None:
                return None
            optional = "" if column is not None and (column.key or not column.nullable) else "?"
            kinds.append((*form.kind, optional == "?"))
            group_of[name] = groups
            groups += 1
            if form.zone is None:
                parts.append(f"({form.pattern}){optional}")
            else:
                parts.append(f"(?:({form.pattern})({form.zone})?){optional}")
                zones.append((groups - 1, groups))
                groups += 1
        regex = re.compile(",".join(parts))
        return cls(regex, [group_of[name] for name in order], zones, kinds,
                   [list(header).index(name) for name in order])

    def scanner(self, key: Sequence[int], prefix: str, salt: bytes, stored: HashSet,
                keys: KeyLines, raws: dict[int, str], keep: int) -> Any:
        """The compiled scanner for this pattern, or None when it is not built.

        ``key`` holds the positions in ``order`` of the key's fields; the rest is the
        state of the Python loop, which the scanner shares (see ``loader._fastcsv``).
        Only the compiled ``hashes()`` and ``key_lines()`` can be shared: with any other
        ``stored`` or ``keys``, or more fields than the scanner takes, None.
        """
        if (_fastcsv is None or not isinstance(stored, _fastcsv.Hashes)
                or not isinstance(keys, _fastcsv.KeyLines)
                or len(self.kinds) > _fastcsv.MAX_FIELDS):
            return None
        return _fastcsv.Scanner(self.kinds, self.positions,
                                [self.positions[i] for i in key], prefix.encode(), salt,
                                stored, keys, raws, keep)

    def fields(self, raw: str) -> tuple[str, ...] | None:
        found = self._match(raw)
        if found is None:
            return None
        values = found.groups(NULL)
        if not self._zones:
            return self._pick(values)
        changed = None
        utc = self._utc
        for local_at, zone_at in self._zones:
            zone = values[zone_at]
            if zone is NULL:
                continue
            local = values[local_at]
            if len(local) == 10:
                raise NotFast(local)  # a zone needs a time of day
            if zone == "Z":
                continue
            if changed is None:
                changed = list(values)
            if zone[4:] == "00":
                # Whole hours: the date and hour of the result depend only on the date
                # and hour of the input, so they are cached; minutes and seconds stay.
                head = local[:13] + zone
                converted = utc.get(head)
                if converted is None:
                    converted = utc[head] = self._shifted(local, -int(zone[:3]))
                changed[local_at] = converted + local[13:]
            else:
                changed[local_at] = self._in_minutes(local, zone)
        return self._pick(values if changed is None else changed)

    def _shifted(self, local: str, hours: int) -> str:
        """The date and hour (``YYYY-MM-DD HH``) of ``local`` moved by ``hours``."""
        if len(self._utc) > 100_000:
            self._utc.clear()
        try:
            moment = datetime.fromisoformat(local[:13] + ":00") + timedelta(hours=hours)
        except (ValueError, OverflowError):
            raise NotFast(local) from None
        return moment.isoformat(" ")[:13]

    def _in_minutes(self, local: str, zone: str) -> str:
        """``local`` in UTC for a zone whose offset has minutes besides hours."""
        sign = 1 if zone[0] == "+" else -1
        carry, minute = divmod(int(local[14:16]) - sign * int(zone[4:6]), 60)
        hours = carry - sign * int(zone[1:3])
        head = f"{local[:13]}{hours:+d}"
        converted = self._utc.get(head)
        if converted is None:
            converted = self._utc[head] = self._shifted(local, hours)
        return f"{converted}:{minute:02d}{local[16:]}"


def sqlite_timestamp(text: str) -> str:
    """A timestamp's text as ``RowPattern`` gives it (UTC, ``T`` or space, seconds and
    fraction optional) as SQLite stores the parsed value: ``YYYY-MM-DD HH:MM:SS.ffffff``."""
    if len(text) == 10:
        return f"{text} 00:00:00.000000"
    return f"{text[:10]} {text[11:16]}{text[16:19] or ':00'}.{text[20:]:0<6}"


# What SQLite stores for the text of a plain field, by kind: the bind processors' form of
# the parsed value. ``float`` of a decimal's text is the ``float`` of its ``Decimal``;
# text, codes and dates are stored as they are.
_STORED: dict[str, Callable[[str], Any] | None] = {
    "text": None, "code": None, "date": None,
    "integer": int, "decimal": float, "timestamp": sqlite_timestamp,
}


class SqliteValues:
    """The COPY text of plain records, as the values SQLite stores for them.

    PostgreSQL reads the text ``RowPattern`` and the compiled scanner write; SQLite has
    no such input, so their text is converted here, column by column for whole blocks.
    ``kinds`` are ``RowPattern.kinds`` of the written fields, in order.
    """

    def __init__(self, kinds: Sequence[tuple[str, int, bool]]) -> None:
        self._columns = [(_STORED[kind], optional) for kind, _, optional in kinds]

    @classmethod
    def of(cls, pattern: RowPattern) -> SqliteValues:
        return cls([pattern.kinds[i] for i in pattern.positions])

    def row(self, texts: Sequence[str]) -> list[Any]:
        """One record's fields, as ``RowPattern.fields`` gives them."""
        return [None if text == NULL else text if convert is None else convert(text)
                for text, (convert, _) in zip(texts, self._columns, strict=True)]

    def columns(self, text: str) -> tuple[list[Sequence[Any]], list[int]]:
        """The columns of COPY text lines that end with a tab and the record's hash (as
        the scanner writes them without a prefix), and the hashes. At least one line."""
        lines = text.split("\n")
        lines.pop()  # after the last line feed
        cells = list(zip(*(line.split("\t") for line in lines), strict=True))
        columns: list[Sequence[Any]] = []
        for (convert, optional), column in zip(self._columns, cells[:-1], strict=True):
            if optional:
                columns.append([None if text == NULL else text if convert is None
                                else convert(text) for text in column])
            else:
                columns.append(column if convert is None else list(map(convert, column)))
        return columns, list(map(int, cells[-1]))
