"""Half-even rounding in SQL, and derives that run SQL on some dialects only."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import pg_schema_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import Derive, Warehouse, cols
from loader.coltypes import (
    Fixed,
    _round_half_even_decimal,
    _round_half_even_value,
    round_half_even,
)
from loader.errors import ConfigError


@pytest.fixture(scope="module")
def pg() -> Iterator[sa.Connection]:
    for url in pg_schema_url():
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            yield conn
        engine.dispose()


_DECIMALS = st.one_of(
    st.decimals(min_value=-10**6, max_value=10**6, places=6, allow_nan=False),
    # exact ties at the cent: x.xx5
    st.integers(-10**7, 10**7).map(lambda n: Decimal(n) / 100 + Decimal("0.005")),
)


@pytest.mark.postgres
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_DECIMALS, rate=st.sampled_from([Decimal(1), Decimal("0.5"), Decimal("1.25")]))
def test_round_half_even_matches_decimal(pg: sa.Connection, value: Decimal,
                                         rate: Decimal) -> None:
    expected = (value * rate).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    product = sa.literal(value, sa.Numeric()) * sa.literal(rate, sa.Numeric())
    got = pg.execute(sa.select(round_half_even(product, 2))).scalar_one()
    assert got == expected


@pytest.fixture(scope="module")
def sqlite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Connection]:
    """A connection of a SQLite warehouse, which has the exact decimal functions."""
    wh = Warehouse(f"sqlite:///{tmp_path_factory.mktemp('wh') / 'w.db'}")
    with wh.engine.connect() as conn:
        yield conn
    wh.dispose()


def _real(value: Decimal) -> Any:
    """A decimal as SQLite holds it: REAL (a literal of the warehouse's decimal type)."""
    return sa.literal(value, Fixed())


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(quantity=st.integers(-1000, 1000),
       price=st.decimals(min_value=-10**5, max_value=10**5, places=4, allow_nan=False),
       rate=st.one_of(st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False),
                      st.sampled_from([Decimal(1), Decimal("0.5"), Decimal("1.25")])),
       tie=st.integers(-10**7, 10**7))
def test_round_half_even_is_exact_on_sqlite(sqlite: sa.Connection, quantity: int,
                                            price: Decimal, rate: Decimal, tie: int) -> None:
    """On SQLite, where decimals are REAL, products, sums and differences of decimals
    round half-even to the cent exactly as Python's Decimal does, ties included, which
    floating point arithmetic gets wrong (2.675 * 1 is 2.67499999... as a double)."""
    half = Decimal(tie) / 100 + Decimal("0.005")  # x.xx5: a tie at the cent
    cases = [
        (sa.literal(quantity) * _real(price) * _real(rate), quantity * price * rate),
        (_real(half) * _real(Decimal(1)), half),
        (_real(half) + _real(price) - _real(price), half + price - price),
        ((_real(price) - _real(half)) * _real(rate), (price - half) * rate),
    ]
    for expression, exact in cases:
        got = sqlite.execute(sa.select(round_half_even(expression, 2))).scalar_one()
        assert got == exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


# Products stay below 10**20, so that the decimal result has at most 28 digits.
_OPERAND = st.one_of(
    st.floats(min_value=-1e5, max_value=1e5, allow_nan=False, allow_infinity=False),
    st.decimals(min_value=-10**5, max_value=10**5, places=4, allow_nan=False).map(float),
    st.integers(-10**4, 10**4),
)


@settings(max_examples=2000, deadline=None)
@given(operands=st.lists(_OPERAND, min_size=1, max_size=4), places=st.integers(0, 6),
       tie=st.integers(-10**8, 10**8), digits=st.integers(6, 17))
def test_a_product_rounds_in_floating_point_as_in_decimals(
        operands: list[Any], places: int, tie: int, digits: int) -> None:
    """SQLite's function computes a product of REALs in floating point when that rounds
    to the same step as decimals: the result (the sign of zero included) must be the
    decimal one, for any operands and for products at and near a half-way point."""
    program = "v" + "v*" * (len(operands) - 1)
    assert repr(_round_half_even_value(places, program, *operands)) == repr(
        _round_half_even_decimal(places, program, *operands))
    half = (Decimal(tie) + Decimal("0.5")).scaleb(-places)
    rate = operands[0] if 1e-3 <= abs(operands[0]) <= 1e4 else 1.25
    near = float(round(half / Decimal(repr(float(rate))), digits))  # x * rate is about half
    for factors in ([float(half), 1.0], [near, rate], [rate, near, 1]):
        product = "v" + "v*" * (len(factors) - 1)
        assert repr(_round_half_even_value(places, product, *factors)) == repr(
            _round_half_even_decimal(places, product, *factors)), factors


def test_a_product_takes_decimals_when_floating_point_cannot_tell() -> None:
    """2.675 is 2.67499999999999982236431605997495353221893310546875 as a double; its
    decimal product with 1 is a tie at the cent, which goes to the even 2.68."""
    assert _round_half_even_value(2, "vv*", 2.675, 1) == 2.68
    assert round(2.675 * 1, 2) == 2.67  # what floating point alone gives
    assert repr(_round_half_even_value(2, "vv*", -0.001, 1.0)) == "-0.0"
    assert _round_half_even_value(2, "vv*", None, 1.0) is None
    assert _round_half_even_value(2, "vv*", "1.005", 1.0) == 1.0  # text: decimals, a tie


def test_round_half_even_on_sqlite_keeps_nulls(sqlite: sa.Connection) -> None:
    null = sa.null()
    assert sqlite.execute(sa.select(round_half_even(
        _real(Decimal("1.5")) * null, 2))).scalar_one() is None
    assert sqlite.execute(sa.select(round_half_even(null, 2))).scalar_one() is None


def test_round_half_even_does_not_compile_where_it_would_be_inexact() -> None:
    """Neither PostgreSQL nor a SQLite warehouse: no exact decimals, no compiling."""
    from sqlalchemy.dialects import mysql

    with pytest.raises(sa.exc.CompileError, match="PostgreSQL and SQLite"):
        sa.select(round_half_even(sa.literal(Decimal("1.005")), 2)).compile(
            dialect=mysql.dialect())


def test_sql_dialects_needs_both_ways_of_computing() -> None:
    def compute(row: object) -> dict[str, object]:
        return {"y": 1}

    sql = {"y": lambda c: sa.literal(1)}
    out = cols("y:integer")
    with pytest.raises(ConfigError, match="sql_dialects"):
        Derive("d", "t", ("x",), out, compute=compute, sql=sql)
    with pytest.raises(ConfigError, match="sql_dialects"):
        Derive("d", "t", ("x",), out, sql=sql, sql_dialects=("postgresql",))
    with pytest.raises(ConfigError, match="compute= or sql="):
        Derive("d", "t", ("x",), out)
    both = Derive("d", "t", ("x",), out, compute=compute, sql=sql,
                  sql_dialects=("postgresql",))
    assert both.sql_dialects == ("postgresql",)
