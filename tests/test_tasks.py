"""Which database errors a task retries."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa

from loader.tasks import transient


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def _wrap(orig: Exception, cls: type[sa.exc.DBAPIError] = sa.exc.OperationalError,
          invalidated: bool = False) -> sa.exc.DBAPIError:
    return cls("SELECT 1", {}, orig, connection_invalidated=invalidated)


def test_lost_connections_deadlocks_and_busy_files_are_transient() -> None:
    """Errors that go away when the task runs again are retried."""
    assert transient(_wrap(Exception("server closed the connection"), invalidated=True))
    assert transient(_wrap(_PgError("40P01")))  # deadlock detected
    assert transient(_wrap(_PgError("40001")))  # serialization failure
    assert transient(_wrap(_PgError("08006")))  # connection failure
    assert transient(_wrap(sqlite3.OperationalError("database is locked")))


def test_mistakes_are_not_transient() -> None:
    """A missing table or a constraint violation fails at once: retrying cannot help."""
    assert not transient(_wrap(sqlite3.OperationalError("no such table: sales")))
    assert not transient(_wrap(_PgError("42P01"), sa.exc.ProgrammingError))
    assert not transient(_wrap(_PgError("23505"), sa.exc.IntegrityError))
