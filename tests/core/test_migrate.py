"""The library's migrations: the head it knows, and a start without Alembic when current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from loader import migrate
from loader.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[2]


def test_head_is_the_head_of_the_scripts() -> None:
    """``HEAD`` names the newest script: a migration added without it fails here."""
    assert migrate.head_revision() == migrate.HEAD


def test_current_revision_follows_each_upgrade(warehouse_url: str) -> None:
    """None before any migration, then the revision each upgrade reached."""
    engine = sa.create_engine(warehouse_url)
    try:
        assert migrate.current_revision(engine) is None
        migrate.upgrade(engine, "0001")
        assert migrate.current_revision(engine) == "0001"
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.HEAD
    finally:
        engine.dispose()


def _alembic_imported(url: str) -> bool:
    """Whether opening the warehouse at ``url`` in a new interpreter imports Alembic."""
    code = ("import sys\n"
            "from loader.warehouse import Warehouse\n"
            f"Warehouse({url!r}).dispose()\n"
            "print(any(m == 'alembic' or m.startswith('alembic.') for m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return done.stdout.strip() == "True"


def test_a_current_warehouse_opens_without_alembic(tmp_path: Path) -> None:
    """A new warehouse is migrated through Alembic; once at HEAD, it is opened without it."""
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    assert _alembic_imported(url)
    assert _alembic_imported(url) is False
    wh = Warehouse(url, migrate=False)
    try:
        assert migrate.current_revision(wh.engine) == migrate.HEAD
    finally:
        wh.dispose()
