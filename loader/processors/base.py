"""What every processor shares: the run context it is given and the result it returns.

A processor is a small declarative object with a ``name``, the
``table.column`` names it ``reads`` and ``provides``, a ``version``, and one
method, ``run(ctx) -> Result``. Nothing else is required: no base class.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from loader.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from loader.warehouse import Warehouse

Mode = Literal["refresh", "full"]
Progress = Callable[[str, int, int | None], None]


def _no_progress(phase: str, done: int, total: int | None) -> None:
    """Progress is optional: by default it goes nowhere."""


@dataclass
class Context:
    """What a processor knows about the run it is part of."""

    warehouse: Warehouse
    run_id: int
    run_ts: datetime
    mode: Mode = "refresh"
    params: Mapping[str, str] = field(default_factory=dict)
    progress: Progress = _no_progress
    # Values the parts of one task share, computed once (a scan two checks both need).
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def full(self) -> bool:
        return self.mode == "full"

    def remembered(self, conn: Connection, table: str, name: str,
                   compute: Callable[[], Any]) -> Any:
        """``compute()`` over ``table``, or the value it gave when last computed if nothing
        can have written to ``table`` since (see ``loader.facts``). A value used again is
        noted in ``memo["remembered"]`` with the run that computed it."""
        from loader import facts

        fact = facts.remembered(conn, table, name, compute, run_id=self.run_id)
        if fact.reused:
            self.memo.setdefault("remembered", {})[f"{table}.{name}"] = (
                f"computed in run {fact.run_id}; {table} not written to since")
        return fact.value

    def param(self, name: str, default: str | None = None) -> str:
        """A flow parameter; a missing required one is a clear error."""
        value = self.params.get(name, default)
        if value is None:
            raise ConfigError(f"missing parameter {name!r}: pass -p {name}=VALUE")
        return value


@dataclass
class Result:
    """What a processor did, as counts; small and deterministic.

    ``errors`` are failures the processor contained (a bad source file while
    the others loaded): the flow goes on, and the run ends failed with them.
    """

    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    rejected: int = 0
    changes: dict[str, int] = field(default_factory=dict)
    watermark_before: dict[str, str | None] = field(default_factory=dict)
    watermark_after: dict[str, str | None] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count_changes(self, table: str, changes: Mapping[str, int]) -> None:
        for column, count in changes.items():
            name = f"{table}.{column}"
            self.changes[name] = self.changes.get(name, 0) + count

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), default=str, sort_keys=True)


@runtime_checkable
class Processor(Protocol):
    """The shape every unit of work has."""

    name: str
    version: str

    @property
    def reads(self) -> tuple[str, ...]: ...

    @property
    def provides(self) -> tuple[str, ...]: ...

    def run(self, ctx: Context) -> Result: ...

