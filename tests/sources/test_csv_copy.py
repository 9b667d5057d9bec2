"""The COPY text path of the CSV extract stores exactly what the field parsers give.

Each property sends the fast path's text, or a formatted value, through a real COPY
into PostgreSQL and compares what the server stored with the parser's value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import pg_schema_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import loader.sources.csvfile as csvfile
from loader.processors.csv_copy import Column, NotFast, RowPattern, copy_text
from loader.sources.csvfile import (
    parse_code,
    parse_date,
    parse_decimal,
    parse_int,
    parse_timestamp,
)

from .test_csvfile import _NEAR_MISS, _common_timestamps

pytestmark = pytest.mark.postgres
_SETTINGS = settings(max_examples=300, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])

COLUMN_TYPES = {"timestamp": "timestamp", "integer": "bigint", "decimal:2": "numeric(28, 2)",
                "decimal:4": "numeric(28, 4)", "date": "date", "text": "text"}


@pytest.fixture(scope="module")
def server() -> Iterator[psycopg.Connection[Any]]:
    """A connection in a schema of its own, in UTC like the loader's sessions."""
    for url in pg_schema_url():
        dsn = sa.make_url(url).set(drivername="postgresql")
        options = dsn.query["options"]
        plain = dsn.difference_update_query(["options"]).render_as_string(hide_password=False)
        with psycopg.connect(plain, options=f"{options} -c timezone=UTC",
                             autocommit=True) as conn:
            for type_name, sql in COLUMN_TYPES.items():
                table = type_name.replace(":", "_")
                conn.execute(f"CREATE TABLE {table} (k text, v {sql})")
            yield conn


def stored(conn: psycopg.Connection[Any], type_name: str, text: str) -> Any:
    """What the server stores for ``text`` as one field of a COPY text line."""
    table = type_name.replace(":", "_")
    conn.execute(f"TRUNCATE {table}")
    with conn.cursor() as cursor:
        with cursor.copy(f"COPY {table} (k, v) FROM STDIN") as copy:
            copy.write(f"k\t{text}\n")
        cursor.execute(f"SELECT v FROM {table}")
        row = cursor.fetchone()
    assert row is not None
    return row[0]


def fast_text(parse: Callable[[str], Any] | None, type_name: str, text: str) -> str | None:
    """The fast path's text for ``text`` in a file ``k,v``, or None if it takes the slow path."""
    columns = {"k": Column("k", None, "text", False, True),
               "v": Column("v", parse, type_name, True, False)}
    pattern = RowPattern.build(["k", "v"], columns, ["k", "v"])
    assert pattern is not None
    try:
        fields = pattern.fields(f"key,{text}")
    except NotFast:
        return None
    return None if fields is None else fields[1]


def check(conn: psycopg.Connection[Any], parse: Callable[[str], Any], type_name: str,
          text: str) -> None:
    """Fast text is only produced for valid text, and stores the parser's value
    (an empty field of a nullable column is NULL, as on the slow path)."""
    fast = fast_text(parse, type_name, text)
    if fast is None:
        return
    expected = None if text == "" else parse(text)
    assert stored(conn, type_name, fast) == expected, (text, fast)


@_SETTINGS
@given(st.one_of(_common_timestamps(), _NEAR_MISS))
def test_timestamps_store_the_parsers_value(server: psycopg.Connection[Any],
                                            text: str) -> None:
    check(server, parse_timestamp, "timestamp", text)


def test_zoned_timestamps_take_the_fast_path_and_convert(server: psycopg.Connection[Any]) -> None:
    for text in ("2024-03-01T00:30:15+01:00", "2024-03-01T23:45:00.25-05:30",
                 "2024-12-31T23:59:59+05:45", "2024-03-01T10:00:00Z", "2024-02-28 22:00-03:00"):
        fast = fast_text(parse_timestamp, "timestamp", text)
        assert fast is not None, text
        assert stored(server, "timestamp", fast) == parse_timestamp(text)
    assert fast_text(parse_timestamp, "timestamp", "2024-03-01Z") is None


_NUMBERS = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{1,22}(\.[0-9]{0,6})?\Z"),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(alphabet=st.sampled_from(list("0123456789+-. e_")), max_size=24),
)


@_SETTINGS
@given(_NUMBERS)
def test_numbers_store_the_parsers_value(server: psycopg.Connection[Any], text: str) -> None:
    check(server, csvfile.parse_int, "integer", text)
    for places in (2, 4):
        check(server, parse_decimal(places), f"decimal:{places}", text)


@_SETTINGS
@given(st.one_of(st.dates().map(str), st.from_regex(r"\A[0-9]{4}-[0-3][0-9]-[0-3][0-9]\Z"),
                 st.text(max_size=12)),
       st.text(alphabet=st.sampled_from(list("abcXYZé 1")), max_size=4))
def test_dates_and_codes_store_the_parsers_value(server: psycopg.Connection[Any], day: str,
                                                 code: str) -> None:
    check(server, parse_date, "date", day)
    check(server, parse_code(3), "text", code)


@_SETTINGS
@given(st.text(alphabet=st.sampled_from(list('ab ,"\\\t\r\né\x0b\u00a0')), max_size=12))
def test_plain_text_is_stored_stripped(server: psycopg.Connection[Any], text: str) -> None:
    """Text fields pass through only when COPY would store exactly the stripped field."""
    fast = fast_text(None, "text", text)
    if fast is not None:
        assert stored(server, "text", fast) == (text.strip() or None)


@_SETTINGS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=20))
def test_formatted_values_round_trip(server: psycopg.Connection[Any], text: str) -> None:
    """The slow path's formatting survives COPY unchanged, special characters included."""
    assert stored(server, "text", copy_text(text)) == text


def test_a_pattern_needs_every_field_to_have_a_text_form() -> None:
    columns = {"k": Column("k", None, "text", False, True),
               "v": Column("v", lambda t: t[::-1], "text", True, False)}
    assert RowPattern.build(["k", "v"], columns, ["k", "v"]) is None
    typed_key = {"k": Column("k", parse_int, "integer", False, True)}
    assert RowPattern.build(["k"], typed_key, ["k"]) is None
    wide = {"k": Column("k", None, "text", False, True),
            "v": Column("v", parse_decimal(4), "decimal:20", True, False)}
    assert RowPattern.build(["k", "v"], wide, ["k", "v"]) is None
