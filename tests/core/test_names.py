"""Names the loader derives from a processor's name must fit every dialect."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from loader import Warehouse

from .shop import flow, sample_shop, view


def test_a_long_processor_name_works_on_every_dialect(warehouse: Warehouse,
                                                      tmp_path: Path) -> None:
    """A derive named with 57 characters runs on PostgreSQL as on SQLite: its staging
    table names, built from the processor name, are kept within the identifier limit."""
    shop = sample_shop(tmp_path / "data")
    processors = flow()
    processors[2] = dataclasses.replace(
        processors[2], name="order_values_derived_from_quantity_price_and_the_customer")
    assert len(processors[2].name) == 57
    outcome = shop.run(warehouse, "full", processors)
    assert outcome.status == "succeeded", outcome.error
    assert {r["id"]: r["total"] for r in view(warehouse, "orders")
            if r["shop"] == "east"} == {"1": 7, "2": 10, "3": 5}
