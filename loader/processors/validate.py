"""Validation checks at the end of a flow: a failing check fails the run.

A check is a function of an open connection and the run's context that
returns None when the warehouse is consistent, or a sentence saying what is
not. All checks run, and every failure is reported. A check that adds up a
whole table may take the sums through ``ctx.remembered``, which reads the table
again only when it may have been written to since (``loader.facts``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Connection

from loader.errors import ValidationFailed
from loader.processors.base import Context, Result

CheckFn = Callable[[Connection, Context], str | None]


@dataclass(frozen=True)
class Check:
    """One named validation check, with the ``table.column`` names it reads."""

    name: str
    fn: CheckFn
    reads: tuple[str, ...] = ()


@dataclass
class Validate:
    """Run ``checks``; raise ValidationFailed naming every check that failed."""

    name: str
    checks: tuple[Check, ...]
    version: str = "1"

    @property
    def reads(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r for check in self.checks for r in check.reads))

    @property
    def provides(self) -> tuple[str, ...]:
        return ()

    def run(self, ctx: Context) -> Result:
        result = Result()
        failures = []
        # A transaction that commits: values the checks remember are stored in it.
        with ctx.warehouse.begin() as conn:
            for check in self.checks:
                problem = check.fn(conn, ctx)
                result.details[check.name] = problem or "ok"
                if problem:
                    failures.append((check.name, problem))
        if ctx.memo.get("remembered"):
            result.details["remembered"] = ctx.memo["remembered"]
        if failures:
            raise ValidationFailed(", ".join(n for n, _ in failures),
                                   "; ".join(f"{n}: {p}" for n, p in failures))
        return result
