"""Shared fixtures: real warehouses on SQLite and PostgreSQL, and service checks.

PostgreSQL tests get a fresh schema each (through ``search_path``), so they
never see each other's tables. When a service is down the tests that need it
are skipped on a developer's machine and fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from loader.warehouse import Warehouse

PG_URL = os.environ.get("LOADER_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LOADER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def service_missing(what: str, error: BaseException) -> None:
    """Fail under CI, skip elsewhere."""
    message = f"{what} is not reachable: {error}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose default schema is new and dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        service_missing("PostgreSQL", exc)
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextlib.contextmanager
def warehouse_on(dialect: str, path: Path) -> Iterator[Warehouse]:
    """A new warehouse: the SQLite file ``path``, or a new PostgreSQL schema."""
    with contextlib.ExitStack() as stack:
        url = (f"sqlite:///{path}" if dialect == "sqlite"
               else stack.enter_context(contextlib.contextmanager(pg_schema_url)()))
        wh = Warehouse(url)
        stack.callback(wh.dispose)
        yield wh


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from pg_schema_url()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A URL of an empty warehouse, on each dialect."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/warehouse.db"
    else:
        yield from pg_schema_url()


@pytest.fixture
def warehouse(warehouse_url: str) -> Iterator[Warehouse]:
    """An empty, migrated warehouse, on each dialect."""
    wh = Warehouse(warehouse_url)
    yield wh
    wh.dispose()


@pytest.fixture
def statements(warehouse: Warehouse) -> Iterator[list[str]]:
    """The SQL the ``warehouse`` engine sends, in order, while the test runs."""
    sent: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    sa.event.listen(warehouse.engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(warehouse.engine, "before_cursor_execute", record)


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        service_missing("Redis", exc)
    return REDIS_URL
