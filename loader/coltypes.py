"""The column types a tracked table may hold, by name, and their SQL types.

Tables are described with short type names (``text``, ``integer``,
``decimal:4``, ``decimal``, ``timestamp``, ``date``, ``boolean``) so that a
definition can be stored in the warehouse's registry and compared later.
Decimals stay exact on PostgreSQL (``NUMERIC``); on SQLite they are stored as
REAL and read back as the shortest decimal that round-trips the float, rounded
to the column's places. Sums of decimals use :func:`exact_sum`, which adds
scaled integers on SQLite so that a total is exact there too.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    ExpressionClauseList,
    Grouping,
    TypeCoerce,
)
from sqlalchemy.sql.functions import GenericFunction
from sqlalchemy.types import TypeDecorator

from loader.errors import SchemaError

TYPE_NAMES = ("text", "integer", "decimal", "timestamp", "date", "boolean")
_DECIMAL = re.compile(r"^decimal(?::(\d{1,2}))?$")


class Fixed(TypeDecorator[Decimal]):
    """An exact decimal with an optional fixed number of places."""

    impl = sa.Numeric
    cache_ok = True

    def __init__(self, places: int | None = None) -> None:
        super().__init__()
        self.places = places

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.Float(asdecimal=False))
        if self.places is None:
            return dialect.type_descriptor(sa.Numeric())
        return dialect.type_descriptor(sa.Numeric(28, self.places))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return float(value)
        return Decimal(value) if not isinstance(value, Decimal) else value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        return to_decimal(value, self.places)

    def result_processor(self, dialect: sa.Dialect, coltype: Any) -> Any:
        """PostgreSQL returns exact decimals already, with the column's scale."""
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def stamp_micros(value: datetime) -> int:
    """A naive UTC timestamp as SQLite stores a change stamp: microseconds since 1970."""
    return (value - EPOCH) // _MICROSECOND


def micros_stamp(value: int) -> datetime:
    """The timestamp :func:`stamp_micros` stored."""
    return EPOCH + timedelta(microseconds=value)


class Stamp(TypeDecorator[datetime]):
    """A change stamp of a tracked table (naive UTC).

    PostgreSQL keeps a ``TIMESTAMP``. SQLite keeps the microseconds since 1970 as an
    INTEGER: 8 bytes where a timestamp's text takes 26, and a tracked row holds two
    stamps per data column. At 1,000,000 sales, stamps as text made 425 MB of the
    table, as integers 226 MB, and the load took two thirds of the time. Integers
    order as the timestamps do, so comparisons and indexes work alike.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None or dialect.name != "sqlite":
            return value
        return stamp_micros(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        if isinstance(value, str):  # a warehouse not migrated yet (0003) holds text
            return datetime.fromisoformat(value)
        return micros_stamp(int(value))


def converter(name: str) -> Callable[[Any], Any]:
    """``python_value`` for one type name, with the type's work done once."""
    if name.startswith("decimal"):
        places = places_of(name)
        quantum = Decimal(1).scaleb(-places) if places is not None else None

        def decimal_value(value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, Decimal):
                value = to_decimal(value)
            return value.quantize(quantum) if quantum is not None else value

        return decimal_value
    return lambda value: python_value(name, value)


def to_decimal(value: Any, places: int | None = None) -> Decimal | None:
    """A database value as a Decimal; floats by their shortest round-trip form."""
    if value is None:
        return None
    if isinstance(value, float):
        result = Decimal(repr(value))
    elif isinstance(value, Decimal):
        result = value
    else:
        result = Decimal(str(value))
    if places is not None:
        result = result.quantize(Decimal(1).scaleb(-places))
    return result


def sql_type(name: str) -> sa.types.TypeEngine[Any]:
    """The SQLAlchemy type for a type name; raises SchemaError for an unknown one."""
    if name == "text":
        return sa.Text()
    if name == "integer":
        return sa.BigInteger()
    if name == "timestamp":
        return sa.DateTime()
    if name == "date":
        return sa.Date()
    if name == "boolean":
        return sa.Boolean()
    match = _DECIMAL.match(name)
    if match:
        places = match.group(1)
        return Fixed(int(places) if places is not None else None)
    raise SchemaError(
        f"unknown column type {name!r}: use one of text, integer, decimal, decimal:N, "
        "timestamp, date, boolean"
    )


def places_of(name: str) -> int | None:
    """The decimal places of a ``decimal:N`` type name, None otherwise."""
    match = _DECIMAL.match(name)
    return int(match.group(1)) if match and match.group(1) else None


INT64 = 2**63


def check_range(name: str, value: Any) -> Any:
    """``value`` if the warehouse column type can hold it; ValueError otherwise."""
    if name == "integer" and isinstance(value, int) and not -INT64 <= value < INT64:
        raise ValueError(f"{value} does not fit a 64-bit integer")
    if name.startswith("decimal") and isinstance(value, Decimal) and value.is_finite():
        places = places_of(name)
        if places is not None and value.adjusted() + 1 > 28 - places:
            raise ValueError(f"{value} has more than {28 - places} digits before the point")
    return value


def python_value(name: str, value: Any) -> Any:
    """Normalise a value read from SQL to the Python type of a type name."""
    if value is None:
        return None
    if name.startswith("decimal"):
        return to_decimal(value, places_of(name))
    if name == "timestamp" and isinstance(value, str):
        return datetime.fromisoformat(value)
    if name == "date" and isinstance(value, str):
        return date.fromisoformat(value[:10])
    return value


class exact_sum(GenericFunction[Decimal]):
    """``SUM`` of a decimal column that is exact on every dialect.

    On SQLite, where decimals are stored as REAL, the values are scaled to
    integers, summed exactly, and divided back once, giving the double
    nearest to the exact total.
    """

    name = "exact_sum"
    inherit_cache = True

    def __init__(self, column: Any, places: int) -> None:
        self.places = places
        super().__init__(column, type_=Fixed(places))


@compiles(exact_sum)
def _exact_sum_default(element: exact_sum, compiler: Any, **kw: Any) -> str:
    return f"sum({compiler.process(element.clauses, **kw)})"


@compiles(exact_sum, "sqlite")
def _exact_sum_sqlite(element: exact_sum, compiler: Any, **kw: Any) -> str:
    arg = compiler.process(element.clauses, **kw)
    scale = 10**element.places
    return f"(sum(CAST(round(({arg}) * {scale}) AS INTEGER)) / {scale}.0)"


class round_half_even(GenericFunction[Decimal]):
    """``value`` rounded half-even (banker's rounding) to ``places`` decimal places.

    Exact on PostgreSQL's NUMERIC, whose own ``round`` rounds half away from zero: a
    value exactly half-way between two steps goes to the even one. On SQLite, whose
    decimals are REAL, the ``+``, ``-`` and ``*`` of ``value`` (those outside any
    function or CASE) are computed exactly by functions the warehouse's connections
    register (see :func:`register_sqlite_functions`), from each operand's shortest
    round-trip form, as Python reads it. Other dialects do not compile it.
    """

    name = "round_half_even"
    inherit_cache = True

    def __init__(self, value: Any, places: int) -> None:
        self.places = places
        super().__init__(value, type_=Fixed(places))


@compiles(round_half_even)
def _round_half_even_default(element: round_half_even, compiler: Any, **kw: Any) -> str:
    raise CompileError(f"round_half_even is exact only on PostgreSQL and SQLite, not on "
                       f"{compiler.dialect.name}")


@compiles(round_half_even, "postgresql")
def _round_half_even_postgresql(element: round_half_even, compiler: Any, **kw: Any) -> str:
    value = compiler.process(element.clauses, **kw)
    step = 10**element.places
    scaled = f"(({value}) * {step})"
    return (f"(CASE WHEN abs({scaled} - trunc({scaled})) = 0.5"
            f" THEN 2 * round({scaled} / 2) / {step}"
            f" ELSE round({value}, {element.places}) END)")


@compiles(round_half_even, "sqlite")
def _round_half_even_sqlite(element: round_half_even, compiler: Any, **kw: Any) -> str:
    (value,) = element.clauses.clauses
    operands: list[str] = []
    program = _exact_program(value, operands, compiler, **kw)
    return f"loader_round_half_even({element.places}, '{program}', {', '.join(operands)})"


_EXACT_OPERATIONS: dict[Any, tuple[str, Callable[[Decimal, Decimal], Decimal]]] = {
    operators.mul: ("*", operator.mul),
    operators.add: ("+", operator.add),
    operators.sub: ("-", operator.sub),
}
_BY_SYMBOL = dict(_EXACT_OPERATIONS.values())


def _exact_program(expression: Any, operands: list[str], compiler: Any, **kw: Any) -> str:
    """The ``+``, ``-`` and ``*`` at the top of ``expression`` as a postfix program
    (``v`` takes the next of ``operands``, whose SQL this appends), for SQLite's
    ``loader_round_half_even`` to compute with decimals."""
    inner = expression
    while isinstance(inner, (Grouping, TypeCoerce)):
        inner = inner.element if isinstance(inner, Grouping) else inner.clause
    if isinstance(inner, BinaryExpression):
        parts = [inner.left, inner.right]
    elif isinstance(inner, ExpressionClauseList):  # a chain: a * b * c
        parts = list(inner.clauses)
    else:
        parts = []
    if parts and inner.operator in _EXACT_OPERATIONS:
        symbol = _EXACT_OPERATIONS[inner.operator][0]
        program = _exact_program(parts[0], operands, compiler, **kw)
        for part in parts[1:]:
            program += _exact_program(part, operands, compiler, **kw) + symbol
        return program
    operands.append(str(compiler.process(expression, **kw)))
    return "v"


def _sqlite_decimal(value: Any) -> Decimal | None:
    """A SQLite value as the Decimal Python reads: REAL by its shortest round-trip form,
    INTEGER and TEXT as written."""
    if value is None:
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(value if isinstance(value, int) else str(value))


def _round_half_even_value(places: int, program: str, *operands: Any) -> float | None:
    """Run ``program`` over ``operands`` with decimals; round the result half-even to
    ``places``. NULL when an operand is.

    A product of REAL and INTEGER operands is first computed in floating point: when it
    is far enough from a half-way point that the decimal product cannot lie on the other
    side of it, both round to the same step, and the decimals are not needed.
    """
    if program in _PRODUCTS and places <= _MAX_FAST_PLACES:
        nearest = _nearest_product(places, operands)
        if nearest is not None:
            return nearest
    return _round_half_even_decimal(places, program, *operands)


# Programs that multiply their operands, up to eight: "v", "vv*", "vv*v*", ...
_PRODUCTS = frozenset("v" + "v*" * n for n in range(8))
_MAX_FAST_PLACES = 15
_STEPS = [10.0**p for p in range(_MAX_FAST_PLACES + 1)]


def _nearest_product(places: int, operands: tuple[Any, ...]) -> float | None:
    """The product of ``operands`` rounded to ``places``, computed in floating point;
    None when that might differ from the decimal result.

    The decimal product multiplies each REAL's shortest round-trip form, which is within
    half a unit in the last place of the REAL; each multiplication in floating point
    rounds once more. For up to eight operands the two products differ by less than
    2e-15 of their size, so when the product (in steps of ``places``) is further than
    1e-14 of its size from a half-way point, both round to the same step. The step
    count is then an integer below 2**53, and dividing it by the power of ten rounds
    once, to the REAL nearest the decimal result, as converting that result does.
    """
    product = 1.0
    for value in operands:
        kind = type(value)
        if kind is float or (kind is int and -(2**53) <= value <= 2**53):
            product *= value
        else:
            return None  # NULL, text or a big integer: decimals decide
    scaled = product * _STEPS[places]
    if not abs(scaled) < 2.0**52:  # also infinities and NaN
        return None
    if abs(scaled - math.floor(scaled) - 0.5) <= abs(scaled) * 1e-14:
        return None
    steps = round(scaled)
    if steps == 0:
        return math.copysign(0.0, scaled)  # the decimal result keeps the sign of zero
    return steps / _STEPS[places]


def _round_half_even_decimal(places: int, program: str, *operands: Any) -> float | None:
    """``_round_half_even_value`` with decimals only."""
    stack: list[Decimal] = []
    taken = iter(operands)
    for step in program:
        if step == "v":
            value = _sqlite_decimal(next(taken))
            if value is None:
                return None
            stack.append(value)
        else:
            right = stack.pop()
            stack.append(_BY_SYMBOL[step](stack.pop(), right))
    (result,) = stack
    return float(result.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN))


def register_sqlite_functions(dbapi_connection: Any) -> None:
    """Give a SQLite connection the function that ``round_half_even`` compiles to."""
    dbapi_connection.create_function("loader_round_half_even", -1, _round_half_even_value,
                                     deterministic=True)


class iso_date(GenericFunction[str]):
    """A date as ``YYYY-MM-DD`` text, as Python's ``str`` gives it, whatever the session's
    date style."""

    name = "iso_date"
    inherit_cache = True

    def __init__(self, value: Any) -> None:
        super().__init__(value, type_=sa.Text())


@compiles(iso_date)
def _iso_date_default(element: iso_date, compiler: Any, **kw: Any) -> str:
    # SQLite keeps dates as this very text.
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


@compiles(iso_date, "postgresql")
def _iso_date_postgresql(element: iso_date, compiler: Any, **kw: Any) -> str:
    return f"to_char({compiler.process(element.clauses, **kw)}, 'YYYY-MM-DD')"
