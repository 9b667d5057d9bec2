"""loader: an incremental, change-tracking warehouse loader.

The warehouse records when each column of each row last changed; a refresh
re-derives exactly the cells whose inputs changed and rebuilds exactly the
aggregate groups they touch, and always agrees with a full rebuild.
"""

from __future__ import annotations

from loader.errors import LoaderError
from loader.execute import RunOutcome, run_sequence
from loader.flow import Flow, step
from loader.processors._select import Lookup
from loader.processors.aggregate import Aggregate, Measure, count, max_of, min_of, sum_of
from loader.processors.base import Context, Processor, Result
from loader.processors.csv_extract import CsvSnapshot, Field
from loader.processors.derive import Derive
from loader.processors.quality import Quality, Rule
from loader.processors.sql_extract import SqlExtract
from loader.processors.validate import Check, Validate
from loader.tracking import Col, TrackedTable, cols
from loader.warehouse import Warehouse, mask_url

__all__ = [
    "Aggregate",
    "Check",
    "Col",
    "Context",
    "CsvSnapshot",
    "Derive",
    "Field",
    "Flow",
    "LoaderError",
    "Lookup",
    "Measure",
    "Processor",
    "Quality",
    "Result",
    "Rule",
    "RunOutcome",
    "SqlExtract",
    "TrackedTable",
    "Validate",
    "Warehouse",
    "cols",
    "count",
    "mask_url",
    "max_of",
    "min_of",
    "run_sequence",
    "step",
    "sum_of",
]
