"""Alembic environment for the loader's own tables.

The library passes its open connection in ``config.attributes["connection"]``;
from the command line the URL comes from ``-x url=...`` or
``LOADER_WAREHOUSE_URL``.
"""

from __future__ import annotations

from alembic import context

from loader.migrate import VERSION_TABLE
from loader.warehouse import create_engine, warehouse_url

config = context.config


def run_migrations(connection: object) -> None:
    context.configure(connection=connection, version_table=VERSION_TABLE,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    if context.is_offline_mode():
        context.configure(url=warehouse_url(context.get_x_argument(as_dictionary=True).get("url")),
                          version_table=VERSION_TABLE, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(warehouse_url(context.get_x_argument(as_dictionary=True).get("url")))
    with engine.begin() as conn:
        run_migrations(conn)
    engine.dispose()


main()
