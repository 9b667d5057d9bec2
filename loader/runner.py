"""Running a flow: the run's start and end around a Celery canvas.

Start: take the warehouse lock, draw the run clock, record the run with the
ids of its tasks. Then send the canvas (to the embedded worker, or to the
broker's workers) and watch the tasks' states until every task succeeded or
one failed and nothing is still running. End: record the status and error,
release the lock; every task also carries an error callback that marks the
run failed, so a run whose watcher died is not left "running" by a failure.
"""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from celery import signals

from loader import flow as flows
from loader import history, tasks
from loader.celery_app import app, embedded, run_failed
from loader.errors import ConfigError, LoaderError
from loader.execute import contained_errors, describe
from loader.flow import Flow
from loader.lock import Lease
from loader.processors.base import Mode, Processor
from loader.warehouse import Warehouse

FINISHED = {"SUCCESS", "FAILURE", "REVOKED"}
# How often the watcher reads the tasks' states: in-process they are in memory, and a
# short run ends sooner after its last task; from a broker's backend, less often. A task
# that ends in this process (the embedded worker) wakes the watcher at once.
POLL_EMBEDDED = 0.05
POLL_BROKER = 0.2
ACTIVE = {"STARTED", "PROGRESS", "RETRY", "RECEIVED"}

# Set when a task ends in this process. Celery stores a task's state before it sends
# task_postrun, so a watcher woken by it reads the state that woke it.
_task_ended = threading.Event()


def _wake_watcher(**kwargs: Any) -> None:
    _task_ended.set()


signals.task_postrun.connect(_wake_watcher, weak=False)


@dataclass
class TaskState:
    """What the watcher knows of one task."""

    name: str
    task_id: str
    stage: int
    state: str = "PENDING"
    info: Any = None


@dataclass
class RunReport:
    """The end of a run: its id, status, error and every task's last state."""

    run_id: int
    flow: str
    mode: str
    status: str
    error: str | None
    seconds: float
    tasks: list[TaskState] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


Watcher = Callable[[Sequence[TaskState]], None]


def _ignore(states: Sequence[TaskState]) -> None:
    """The default watcher shows nothing."""


_embedded: threading.Thread | None = None
_embedded_worker: Any = None
_embedded_lock = threading.Lock()


def embedded_worker(concurrency: int = 4) -> None:
    """Start (once per process) a Celery worker in a thread pool on the in-memory broker.

    It lives as long as the process: stopping a worker takes seconds, and a
    process that runs several flows (tests, the demo) reuses it. A worker knows
    the tasks registered when it started; one that is reused learns those
    registered since (a flow loaded later), which it would otherwise refuse.
    """
    global _embedded, _embedded_worker
    with _embedded_lock:
        if _embedded is not None and _embedded.is_alive():
            consumer = _embedded_worker.consumer
            if any(name not in consumer.strategies for name in list(app.tasks)):
                consumer.update_strategies()
            return
        from celery.contrib.testing.worker import TestWorkController, setup_app_for_worker

        setup_app_for_worker(app, "WARNING", None)
        for name in ("celery", "kombu"):
            # The runner reports task errors itself, once, in one line.
            logging.getLogger(name).setLevel(logging.CRITICAL)
        worker = TestWorkController(
            app=app, concurrency=concurrency, pool="threads", loglevel="WARNING",
            logfile=None, hostname=f"embedded@{socket.gethostname()}", ready_callback=None,
            without_heartbeat=True, without_mingle=True, without_gossip=True)
        _embedded = threading.Thread(target=worker.start, name="loader-worker", daemon=True)
        _embedded.start()
        worker.ensure_started()
        _embedded_worker = worker


def run_flow(wh: Warehouse, flow: Flow, *, params: Mapping[str, str] | None = None,
             mode: Mode | None = None, only: Sequence[str] = (), wait: float = 0.0,
             watcher: Watcher = _ignore, poll: float | None = None,
             concurrency: int = 4) -> RunReport:
    """Run ``flow`` against ``wh``; returns how it ended (it raises only for bad input)."""
    params = dict(params or {})
    flows.check(flow)
    missing = [p for p in flow.params if p not in params]
    if missing:
        raise ConfigError(f"flow {flow.name or 'given'} needs parameter(s) "
                          f"{', '.join(missing)}: pass -p {missing[0]}=VALUE")
    chosen = flows.select(flow, only) if only else flow.stages
    run_mode: Mode = mode or flow.mode
    lease = Lease(wh)
    lease.acquire(wait)
    started = time.monotonic()
    try:
        with wh.begin() as conn:
            run = history.start_run(conn, flow.name or "adhoc", run_mode, params, only)
        lease.attach(run.run_id)
        payload = {"run_id": run.run_id, "run_ts": run.run_ts.isoformat(), "flow": run.flow,
                   "mode": run_mode, "params": params, "warehouse": wh.masked_url}
        states, canvas = _prepare(chosen, payload, wh)
        with wh.begin() as conn:
            history.set_task_ids(conn, run.run_id, {s.name: s.task_id for s in states})
        tasks.use_warehouse(wh)
        status, error = "failed", None
        try:
            if embedded():
                embedded_worker(concurrency)
            with _collector_skips_what_exists():
                sent = canvas.apply_async()
                status, failed = _watch(states, watcher, poll if poll is not None else (
                    POLL_EMBEDDED if embedded() else POLL_BROKER))
            error = _run_error(wh, run.run_id, status, failed, states)
            if error and status == "succeeded":
                status = "failed"
            del sent
            _unsubscribe_results()
        except LoaderError:
            raise
        except Exception as exc:
            error = describe(exc)
        with wh.begin() as conn:
            history.finish_run(conn, run.run_id, status, error)
        return RunReport(run.run_id, run.flow, run_mode, status, error,
                         time.monotonic() - started, states)
    finally:
        lease.release()


@contextmanager
def _collector_skips_what_exists() -> Iterator[None]:
    """Leave the objects that exist now (modules, the worker, the flow) out of the cyclic
    garbage collector's passes until the block ends.

    They outlive the run, and each full collection during it would walk them all again
    while holding the GIL, stopping the tasks' threads. At 1,000,000 sales, a nightly
    spent 0.12 to 0.15 s in three full collections and a 1% refresh 61 ms in one; with
    them left out, 6 ms and none.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _prepare(chosen: Sequence[Sequence[Processor]], payload: dict[str, Any],
             wh: Warehouse) -> tuple[list[TaskState], Any]:
    states = [TaskState(proc.name, str(uuid.uuid4()), index)
              for index, stage in enumerate(chosen) for proc in stage]
    errback = run_failed.s(run_id=payload["run_id"], warehouse=wh.masked_url)
    canvas = flows.build(chosen, run=payload, link_error=errback,
                         task_ids={s.name: s.task_id for s in states})
    return states, canvas


def _unsubscribe_results() -> None:
    """Stop listening for this run's results now, while the backend can still answer.

    Celery's Redis backend subscribes to every task it sends and unsubscribes
    when the result handle is garbage collected, which otherwise happens at
    interpreter exit and prints errors.
    """
    consumer = getattr(app.backend, "result_consumer", None)
    subscribed = getattr(consumer, "subscribed_to", None)
    pubsub = getattr(consumer, "_pubsub", None)
    if not subscribed or pubsub is None:
        return
    keys = list(subscribed)
    subscribed.clear()
    pubsub.unsubscribe(*keys)
    gc.collect()


def _watch(states: list[TaskState], watcher: Watcher, poll: float
           ) -> tuple[str, TaskState | None]:
    """Poll the tasks' states until the run is over; returns the status and the failed task."""
    while True:
        for state in states:
            if state.state in FINISHED:
                continue
            meta = app.backend.get_task_meta(state.task_id)
            state.state, state.info = meta["status"], meta.get("result")
        watcher(states)
        failed = [s for s in states if s.state in ("FAILURE", "REVOKED")]
        running = [s for s in states if s.state in ACTIVE]
        if failed and not running:
            return "failed", failed[0]
        if all(s.state == "SUCCESS" for s in states):
            return "succeeded", None
        _task_ended.wait(poll)
        _task_ended.clear()


def _run_error(wh: Warehouse, run_id: int, status: str, failed: TaskState | None,
               states: Sequence[TaskState]) -> str | None:
    """The run's error: the failed task's recorded error, or the errors tasks contained."""
    if failed is not None:
        with wh.engine.connect() as conn:
            recorded = history.task_error(conn, run_id, failed.name)
        text = recorded or (describe(failed.info) if isinstance(failed.info, BaseException)
                            else str(failed.info))
        return f"task {failed.name!r} failed: {text}"
    if status == "succeeded":
        return contained_errors((s.name, s.info) for s in states if isinstance(s.info, dict))
    return None
