"""Running processors as one run: lock, run clock, history, task runs.

``run_task`` is what a Celery task body calls; ``run_sequence`` runs a list
of processors in order in this process, which is what library users and
tests call when they need no canvas.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from loader import history
from loader.errors import LoaderError
from loader.history import RunInfo
from loader.lock import Lease
from loader.processors.base import Context, Mode, Processor, Progress, Result, _no_progress
from loader.warehouse import Warehouse, mask_url


def describe(exc: BaseException) -> str:
    """A one-line description of an error, with URL passwords masked."""
    text = str(exc) if isinstance(exc, LoaderError) else f"{type(exc).__name__}: {exc}"
    return mask_url(" ".join(text.split()))


def run_task(wh: Warehouse, run: RunInfo, processor: Processor, *,
             celery_id: str | None = None, worker: str | None = None,
             progress: Progress = _no_progress) -> Result:
    """Run one processor within a run and record it in the history."""
    task_run = history.start_task(wh, run.run_id, processor.name, celery_id, worker)
    mode: Mode = "full" if run.mode == "full" else "refresh"
    ctx = Context(wh, run.run_id, run.run_ts, mode, run.params, progress)
    started = time.perf_counter()
    try:
        result = processor.run(ctx)
    except BaseException as exc:
        history.finish_task(wh, task_run, None, error=describe(exc))
        raise
    result.seconds = time.perf_counter() - started
    history.finish_task(wh, task_run, result)
    return result


def contained_errors(results: Iterable[tuple[str, Result | Mapping[str, Any]]]) -> str | None:
    """The failures tasks contained (and went on), as one message, or None."""
    found = []
    for name, result in results:
        errors = result.errors if isinstance(result, Result) else result.get("errors") or []
        found += [f"task {name!r}: {error}" for error in errors]
    return "; ".join(found) or None


@dataclass
class RunOutcome:
    """How a run ended."""

    run_id: int
    status: str
    error: str | None = None
    results: dict[str, Result] = field(default_factory=dict)
    traceback: str | None = None


def run_sequence(wh: Warehouse, processors: Sequence[Processor], *, mode: Mode = "refresh",
                 params: Mapping[str, str] | None = None, flow: str = "adhoc",
                 wait: float = 0.0, progress: Progress = _no_progress) -> RunOutcome:
    """Run ``processors`` one after another as one run; stops at the first failure."""
    lease = Lease(wh)
    lease.acquire(wait)
    try:
        with wh.begin() as conn:
            run = history.start_run(conn, flow, mode, params or {})
        lease.attach(run.run_id)
        outcome = RunOutcome(run.run_id, "succeeded")
        try:
            for processor in processors:
                outcome.results[processor.name] = run_task(wh, run, processor,
                                                           progress=progress)
        except Exception as exc:
            outcome.status, outcome.error = "failed", describe(exc)
            outcome.traceback = mask_url(traceback.format_exc())
        else:
            contained = contained_errors(outcome.results.items())
            if contained:
                outcome.status, outcome.error = "failed", contained
        with wh.begin() as conn:
            history.finish_run(conn, run.run_id, outcome.status, outcome.error)
        return outcome
    finally:
        lease.release()
