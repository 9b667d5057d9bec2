"""Half-even rounding in SQL, and derives that run SQL on some dialects only."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal

import pytest
import sqlalchemy as sa
from conftest import pg_schema_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loader import Derive, cols
from loader.coltypes import round_half_even
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


def test_round_half_even_does_not_compile_where_it_would_be_inexact() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn, pytest.raises(sa.exc.CompileError, match="PostgreSQL"):
        conn.execute(sa.select(round_half_even(sa.literal(Decimal("1.005")), 2)))


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
