"""Distributed runs: Redis broker, real ``loader worker`` processes, a PostgreSQL warehouse.

- ``sales.nightly`` then ``sales.refresh`` (after a batch of changes to the
  sources) give the same outputs whether they run in this process (embedded
  worker) or on two Celery workers: ``sales``, ``daily_sales``,
  ``customer_summary``, the open exceptions and the rejects; the history
  records every task once, with its Celery id and the name of the worker that
  ran it, and both workers did some of the work.
- A worker killed with SIGKILL in the middle of a task (which holds its
  transaction open) loses nothing: the broker redelivers the task to the other
  worker after the visibility timeout (or, failing that, a rerun converges),
  the killed transaction left no row, and the outputs equal an in-process
  run on the same data.

Each scenario runs once per module (a module-scoped fixture) and the tests
check its outcome; workers are always stopped, first with SIGTERM, then with
SIGKILL, in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import REDIS_URL, pg_schema_url, service_missing

from loader import salesdata as sd
from loader.celery_app import embedded
from loader.flow import load
from loader.runner import run_flow
from loader.warehouse import Warehouse

from .support import LOADER, REPO_FLOWS, env, report, rows, write_flows

pytestmark = [pytest.mark.redis, pytest.mark.postgres, pytest.mark.celery]

HOST = socket.gethostname()
NOW = datetime(2026, 11, 5, 8, 30, 15, tzinfo=UTC)
EQUALITY_DB, CRASH_DB = 11, 12
VISIBILITY = 5
HOLD = 3.0
OUTPUTS = {
    "sales": "SELECT * FROM sales",
    "daily_sales": "SELECT * FROM daily_sales",
    "customer_summary": "SELECT * FROM customer_summary",
    "open exceptions": "SELECT rule, table_name, row_key, detail FROM exceptions "
                       "WHERE resolved_at IS NULL",
    "exceptions": "SELECT rule, table_name, row_key, resolved_at IS NULL FROM exceptions",
    "rejects": "SELECT source, line, reason, raw FROM rejects",
}
CRASH_FLOWS = {
    "crashflow": f"""
        from celery import chain

        from loader import Flow, step
        from _toys import Mark
        import sales

        slow = Mark("crash_slow", provides=("toy_log.task",), hold={HOLD})
        crashy = Flow(chain(step(slow), sales.pipeline), mode="full", params=("data_dir",))
    """,
}


def outputs(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every output of the sales flow, each as a sorted list of rows."""
    return {name: sorted(rows(url, sql), key=repr) for name, sql in OUTPUTS.items()}


def apply_changes(data: Path) -> None:
    """A batch of changes to every kind of source, deterministic for a given directory."""
    sd.edit_sales(data, 0.03, 101)
    sd.insert_sales(data, 40, 102)
    sd.delete_sales(data, 25, 103)
    sd.move_sale(data, 104)
    sd.correct_fx(data, 6, 105, NOW)
    sd.fill_fx_gaps(data, 4, 106, NOW)
    sd.change_segments(data, 8, 107, NOW)
    sd.recategorise_products(data, 5, 108, NOW)


def redis_db(number: int) -> str:
    """The test Redis server's database ``number``, emptied."""
    base = REDIS_URL.rsplit("/", 1)[0] if REDIS_URL.count("/") > 2 else REDIS_URL
    url = f"{base}/{number}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).flushdb()
    except redis.exceptions.RedisError as exc:
        service_missing("Redis", exc)
    return url


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def node(self) -> str:
        return f"{self.name}@{HOST}"


@dataclass
class Workers:
    """``loader worker`` subprocesses, each in its own process group."""

    environ: Mapping[str, str]
    directory: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, name: str) -> Worker:
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [LOADER, "worker", "--concurrency", "1", "-n", f"{name}@%h",
                 "--without-mingle", "--without-gossip"],
                env=dict(self.environ), cwd=self.directory, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        worker = Worker(name, process, log)
        self.started.append(worker)
        return worker

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.started:
            while f"{worker.node} ready." not in worker.log.read_text(errors="replace"):
                if worker.process.poll() is not None:
                    pytest.fail(f"worker {worker.name} exited: {self.tail(worker)}")
                if time.monotonic() > deadline:
                    pytest.fail(f"worker {worker.name} not ready: {self.tail(worker)}")
                time.sleep(0.1)

    def by_node(self, node: str) -> Worker:
        return next(w for w in self.started if w.node == node)

    @staticmethod
    def kill(worker: Worker) -> None:
        """SIGKILL the worker and its pool processes, as if its machine died."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()

    @staticmethod
    def tail(worker: Worker) -> str:
        return worker.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for worker in self.started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGTERM)
        for worker in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):  # the pool's children too
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()


@contextlib.contextmanager
def workers(environ: Mapping[str, str], directory: Path, *names: str) -> Iterator[Workers]:
    running = Workers(environ, directory)
    try:
        for name in names:
            running.start(name)
        running.wait_ready()
        yield running
    finally:
        running.stop()


def in_process(url: str, flow: str, data: Path) -> int:
    """Run ``flow`` here, on the embedded worker; returns the run id."""
    if not embedded():
        pytest.fail("LOADER_BROKER_URL is set in the test process: in-process runs need it unset")
    wh = Warehouse(url)
    try:
        done = run_flow(wh, load(flow), params={"data_dir": str(data)}, poll=0.05)
        assert done.ok, done.error
        return done.run_id
    finally:
        wh.dispose()


def distributed(environ: Mapping[str, str], flow: str, data: Path) -> dict[str, Any]:
    done = subprocess.run([LOADER, "run", flow, "-p", f"data_dir={data}", "--json"],
                          env=dict(environ), capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return report(done)


def backend_meta(url: str, task_id: str) -> dict[str, Any] | None:
    """What the Celery result backend holds for a task."""
    raw = redis.Redis.from_url(url).get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw else None


def task_ids(url: str, run_id: int) -> dict[str, str]:
    found = rows(url, "SELECT task_ids FROM loader_runs WHERE run_id = :r", r=run_id)
    return dict(json.loads(found[0][0])) if found and found[0][0] else {}


def task_runs(url: str, run_id: int) -> list[tuple[Any, ...]]:
    return rows(url, "SELECT task, status, celery_id, worker FROM loader_task_runs "
                     "WHERE run_id = :r ORDER BY id", r=run_id)


# --- same outputs in-process and distributed -------------------------------------------


@pytest.fixture(scope="module")
def equality(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """nightly, changes, refresh: in-process on one schema, on two workers on another."""
    broker = redis_db(EQUALITY_DB)
    data = tmp_path_factory.mktemp("equality") / "data"
    sd.generate(data, sd.Scale.quick())
    with contextlib.ExitStack() as stack:
        here = stack.enter_context(contextlib.contextmanager(pg_schema_url)())
        there = stack.enter_context(contextlib.contextmanager(pg_schema_url)())
        environ = env(LOADER_BROKER_URL=broker, LOADER_WAREHOUSE_URL=there,
                      LOADER_FLOWS=REPO_FLOWS)
        Warehouse(there).dispose()  # migrate once, before two workers race to
        running = stack.enter_context(workers(environ, data.parent, "w1", "w2"))
        found: dict[str, Any] = {"workers": [w.node for w in running.started]}
        in_process(here, "sales.nightly", data)
        found["nightly"] = distributed(environ, "sales.nightly", data)
        found["after nightly"] = (outputs(here), outputs(there))
        apply_changes(data)
        in_process(here, "sales.refresh", data)
        found["refresh"] = distributed(environ, "sales.refresh", data)
        found["after refresh"] = (outputs(here), outputs(there))
        found["history"] = {
            key: (task_ids(there, found[key]["run_id"]), task_runs(there, found[key]["run_id"]))
            for key in ("nightly", "refresh")}
        found["backend"] = {
            task_id: backend_meta(broker, task_id)
            for ids, _ in found["history"].values() for task_id in ids.values()}
        yield found


def test_distributed_runs_equal_in_process_runs(equality: dict[str, Any]) -> None:
    """After nightly and after refresh, every output is the same in both warehouses."""
    for moment in ("after nightly", "after refresh"):
        here, there = equality[moment]
        assert here["sales"], "the sales flow loaded nothing"
        for name in OUTPUTS:
            assert here[name] == there[name], f"{name} differs {moment}"
    assert equality["nightly"]["mode"] == "full"
    assert equality["refresh"]["mode"] == "refresh"
    # The refresh had real work to do: its result differs from the nightly one.
    assert equality["after nightly"][0]["sales"] != equality["after refresh"][0]["sales"]
    assert equality["after nightly"][0]["daily_sales"] != \
        equality["after refresh"][0]["daily_sales"]


def test_history_records_each_task_once_with_its_celery_id(equality: dict[str, Any]) -> None:
    """Each distributed run has one succeeded task run per task, carrying the Celery id
    the run recorded for it; the result backend says both workers did some of the work."""
    nodes = set()
    for key in ("nightly", "refresh"):
        ids, recorded = equality["history"][key]
        assert sorted(ids) == sorted(t["task"] for t in equality[key]["tasks"])
        assert sorted(r[0] for r in recorded) == sorted(ids), recorded
        for task, status, celery_id, worker in recorded:
            assert status == "succeeded"
            assert celery_id == ids[task]
            assert worker
            meta = equality["backend"][celery_id]
            assert meta is not None and meta["status"] == "SUCCESS", (task, meta)
            assert meta["name"] == task
            nodes.add(meta["worker"])
    assert nodes == set(equality["workers"])


def test_task_runs_name_the_celery_worker(equality: dict[str, Any]) -> None:
    """loader_task_runs.worker is the Celery node (-n name) that ran the task, as the
    result backend says, and the history of the two runs names both workers."""
    recorded_nodes = set()
    for key in ("nightly", "refresh"):
        _, recorded = equality["history"][key]
        for _task, _status, celery_id, worker in recorded:
            assert worker == equality["backend"][celery_id]["worker"]
            recorded_nodes.add(worker)
    assert recorded_nodes == set(equality["workers"])


# --- a worker killed in the middle of a task -------------------------------------------


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """crash_slow (holding its transaction for HOLD s) then the sales pipeline, on two
    workers with a 5 s visibility timeout; the worker running crash_slow is SIGKILLed."""
    broker = redis_db(CRASH_DB)
    root = tmp_path_factory.mktemp("crash")
    data = root / "data"
    sd.generate(data, sd.Scale.quick(seed=11))
    where = write_flows(root / "flows", CRASH_FLOWS)
    with contextlib.ExitStack() as stack:
        reference = stack.enter_context(contextlib.contextmanager(pg_schema_url)())
        there = stack.enter_context(contextlib.contextmanager(pg_schema_url)())
        environ = env(LOADER_BROKER_URL=broker, LOADER_WAREHOUSE_URL=there,
                      LOADER_FLOWS=f"{where}{os.pathsep}{REPO_FLOWS}",
                      LOADER_VISIBILITY_TIMEOUT=VISIBILITY, LOADER_RESTORE_INTERVAL=1,
                      LOADER_LOCK_TTL=5)
        Warehouse(there).dispose()
        running = stack.enter_context(workers(environ, root, "crash1", "crash2"))
        found: dict[str, Any] = {"rerun": None}
        runner = subprocess.Popen(
            [LOADER, "run", "crashflow.crashy", "-p", f"data_dir={data}", "--json"],
            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        stack.callback(lambda: runner.poll() is None and os.killpg(runner.pid, signal.SIGKILL))
        victim = None
        deadline = time.monotonic() + 30
        while victim is None and time.monotonic() < deadline:
            # The worker has recorded the task run, then writes its row and holds it.
            slow_id = task_ids(there, 1).get("crash_slow")
            meta = backend_meta(broker, slow_id) if slow_id else None
            if meta and meta["status"] == "STARTED" and \
                    [r[1] for r in task_runs(there, 1)] == ["running"]:
                victim = running.by_node(meta["result"]["hostname"])
            else:
                time.sleep(0.05)
        assert victim is not None, "crash_slow never started"
        time.sleep(HOLD / 4)  # its row is written, its transaction still open
        running.kill(victim)
        found["killed"] = victim.node
        found["survivor"] = next(w.node for w in running.started if w is not victim)
        try:
            out, err = runner.communicate(timeout=45)
            found["first"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else err
        except subprocess.TimeoutExpired:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.communicate()
            found["first"] = "no answer in 45 s"
            running.start("crash3")
            running.wait_ready()
            rerun = subprocess.run(
                [LOADER, "run", "crashflow.crashy", "-p", f"data_dir={data}", "--json",
                 "--wait", "30"], env=environ, capture_output=True, text=True, timeout=90,
                check=False)
            found["rerun"] = report(rerun)
        in_process(reference, "sales.nightly", data)
        found["reference"] = outputs(reference)
        found["outputs"] = outputs(there)
        found["runs"] = rows(there, "SELECT run_id, status FROM loader_runs ORDER BY run_id")
        found["task runs"] = task_runs(there, 1)
        found["marks"] = rows(there, "SELECT task, run_id FROM toy_log ORDER BY run_id")
        found["slow meta"] = backend_meta(broker, task_ids(there, 1)["crash_slow"])
        yield found


def test_killed_worker_loses_and_duplicates_nothing(crash: dict[str, Any]) -> None:
    """The task of the killed worker is redelivered and the run succeeds (or a rerun
    converges); the killed transaction left no row; the outputs equal an in-process run."""
    first = crash["first"]
    if crash["rerun"] is None:
        assert isinstance(first, dict) and first["status"] == "succeeded", first
        # Redelivered: run 1 recorded the task twice, the second time it succeeded.
        slow = [r for r in crash["task runs"] if r[0] == "crash_slow"]
        assert [r[1] for r in slow] == ["lost", "succeeded"], slow
        assert slow[0][2] == slow[1][2]  # the same Celery task, delivered twice
        assert [r[3] for r in slow] == [crash["killed"], crash["survivor"]], slow
        assert crash["slow meta"]["worker"] == crash["survivor"]
        assert crash["marks"] == [("crash_slow", 1)]
    else:
        assert crash["rerun"]["status"] == "succeeded", crash["rerun"]
        assert crash["marks"] == [("crash_slow", crash["rerun"]["run_id"])], crash["marks"]
        pytest.fail(f"run 1 did not finish after its worker was killed ({first}); "
                    "a rerun converged")
    others = [r for r in crash["task runs"] if r[0] != "crash_slow"]
    assert len(others) == len({r[0] for r in others}) == 9, others
    assert all(r[1] == "succeeded" for r in others), others
    assert crash["outputs"]["sales"]
    for name in OUTPUTS:
        assert crash["outputs"][name] == crash["reference"][name], f"{name} differs"


def test_killed_task_run_is_not_left_running(crash: dict[str, Any]) -> None:
    """Once the run is over, none of its task runs is still shown as running."""
    assert crash["runs"][0][1] == "succeeded"
    assert [r for r in crash["task runs"] if r[1] == "running"] == []
