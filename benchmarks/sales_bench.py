"""Benchmark of the sales reference flow against a hand-written truncate-and-rebuild baseline.

``python -m benchmarks`` (``make bench``) generates a sales data directory (by default
``Scale.bench()``: 1,000,000 sales rows in 4 region files, 100,000 customers, 10,000
products, 3 years of daily rates for 10 currencies) and, for each warehouse dialect, repeats
K times on a fresh copy of it:

* the baseline (:mod:`benchmarks.baseline`: truncate, reload, rebuild in SQL) on the pristine
  data, then ``sales.nightly`` on an empty warehouse (a fresh PostgreSQL schema, a new SQLite
  file);
* PostgreSQL with Redis only: ``sales.nightly`` on an empty schema with 1 and with 2
  ``loader worker --concurrency 1`` processes (``loader run --json`` in a subprocess); the
  extract stage (the first group: earliest start to latest end in ``loader_task_runs``) and
  the whole run;
* ``sales.refresh`` with nothing changed;
* for 0.1%, 1% and 10% of the sales rows edited (``edit_sales``), and for a batch of fx
  corrections plus customer segment changes: the change, the baseline on the changed data,
  then ``sales.refresh``;
* ``sales.nightly`` over the warehouse, which is then already correct.

Every loader phase and every baseline run is a child process of its own (its peak RSS comes
from ``wait4``); the seconds are the runner's own (``RunReport.seconds``: lock to last task
seen done, embedded worker start included, interpreter start and migrations not) and the
baseline's (first TRUNCATE to COMMIT). Each of our figures is divided by the baseline run on
the same data in the same repetition; the tables give the median, min and max of K.
After every run the row counts of ``sales``, ``daily_sales`` and ``customer_summary`` (and,
on PostgreSQL, the exact revenue total) are compared with the baseline's.

Output: ``<out>/sales-<dialects>-<rows>.md`` (tables, per-task profile, machine, versions,
command), ``<out>/sales-<dialects>-<rows>.json`` (every sample) and
``<out>/refresh-vs-changed-<dialects>-<rows>.png``. A failed run is reported (with its task
history) and ends its repetition; the report is written anyway and the exit status is 1, as
it is for a count mismatch. Each child run may take ``--timeout`` seconds (default 900 + rows / 80).
The Redis database (``--redis``, default db 13) is claimed with a key for the invocation and
flushed before each distributed run: one invocation per database at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from benchmarks._cpu import metered
from benchmarks._workers import workers
from loader.salesdata import Scale, change_segments, correct_fx, edit_sales, generate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
LOADER = str(Path(sys.executable).with_name("loader"))
DEFAULT_PG = os.environ.get("LOADER_BENCH_PG_URL",
                            "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DEFAULT_REDIS = os.environ.get("LOADER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
DIALECTS = ("postgresql", "sqlite")
FRACTIONS = (0.001, 0.01, 0.1)
WORKER_COUNTS = (1, 2)
NIGHTLY, REFRESH = "sales.nightly", "sales.refresh"
DIALECT_LABEL = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}


# --------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One measured run: ours (a phase) or the baseline's, in one repetition of one dialect."""

    dialect: str
    phase: str
    rep: int
    seconds: float
    baseline: float | None = None          # the paired baseline's seconds (same data)
    rss_kb: int | None = None              # peak RSS of the process that ran it
    worker_rss_kb: int | None = None       # distributed runs: the largest worker process
    extract: float | None = None           # distributed runs: the extract stage
    extract_cores: float | None = None     # distributed runs: cores busy in that stage
    changed: int | None = None             # rows (or shop rows) changed before it
    steps: dict[str, float] = field(default_factory=dict)
    tasks: list[dict[str, Any]] = field(default_factory=list)
    stages: list[list[str]] = field(default_factory=list)
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """What one invocation knows: options, directories, and what it measured."""

    args: argparse.Namespace
    scale: Scale
    work: Path
    pristine: Path
    samples: list[Sample] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    fx_changes: int = 0
    segment_changes: int = 0
    generate_seconds: float = 0.0

    @property
    def timeout(self) -> float:
        return float(self.args.timeout)


class PhaseFailed(RuntimeError):
    """A child run failed; ``result`` is what it printed (the task history), if anything."""

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.result = result or {}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- child processes


def child_env(**settings: Any) -> dict[str, str]:
    """This environment without LOADER_* settings, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOADER_")}
    env.update({k: str(v) for k, v in settings.items() if v is not None})
    return env


def run_child(args: Sequence[str], *, env: Mapping[str, str], timeout: float,
              what: str) -> tuple[dict[str, Any], int]:
    """Run a child that prints one JSON line last; that JSON and its peak RSS (KiB, wait4).

    The child gets a process group of its own, killed whole when ``timeout`` passes or
    this process is interrupted.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(list(args), stdout=out, stderr=err, env=dict(env), cwd=ROOT,
                                start_new_session=True)
        lock = threading.Lock()
        state = {"exited": False, "killed": False}

        def kill() -> None:
            with lock:
                if not state["exited"]:
                    state["killed"] = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.daemon = True
        timer.start()
        try:
            # Wait without reaping, so that the timer never signals a recycled pid.
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        except BaseException:
            kill()
            proc.wait()
            raise
        finally:
            timer.cancel()
        with lock:
            state["exited"] = True
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if state["killed"]:
        raise PhaseFailed(f"{what}: killed after the {timeout:.0f} s timeout\n{stderr[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise PhaseFailed(f"{what}: exit {proc.returncode}, no JSON result\n"
                           f"{stdout[-2000:]}\n{stderr[-3000:]}") from None
    if proc.returncode != 0:
        raise PhaseFailed(f"{what}: exit {proc.returncode}: {result.get('error')}\n"
                          f"{stderr[-3000:]}", result)
    return result, int(usage.ru_maxrss)


def tree_hwm_kb(pid: int) -> int:
    """The largest VmHWM (peak RSS, KiB) of ``pid`` and its descendants, read now."""
    best, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]))
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(p) for p in (task / "children").read_text().split()]
    return best


# --------------------------------------------------------------------------- warehouses


def schema_url(url: str, schema: str) -> str:
    """``url`` with ``schema`` as the search path (replacing any ``options`` it had)."""
    base = sa.make_url(url).difference_update_query(["options"])
    rendered = base.render_as_string(hide_password=False)
    sep = "&" if "?" in rendered else "?"
    return f"{rendered}{sep}options=-csearch_path%3D{schema}"


class Postgres:
    """The PostgreSQL server: fresh schemas (dropped at the end), URLs for them."""

    def __init__(self, bench: Bench, url: str) -> None:
        self.bench = bench
        self.url = url
        self.engine = sa.create_engine(url)

    def new_schema(self, tag: str) -> str:
        name = f"sbench_{uuid.uuid4().hex[:8]}_{tag}"
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        self.bench.schemas.append(name)
        return name

    def drop_schema(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        if name in self.bench.schemas:
            self.bench.schemas.remove(name)

    def schema_url(self, name: str) -> str:
        return schema_url(self.url, name)

    def checkpoint(self) -> None:
        """Start each timed run from a clean checkpoint, when allowed (superuser)."""
        with contextlib.suppress(sa.exc.DBAPIError), self.engine.connect() as conn:
            conn.exec_driver_sql("CHECKPOINT")

    def version(self) -> str:
        with self.engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar_one())

    def dispose(self) -> None:
        for name in list(self.bench.schemas):
            with contextlib.suppress(Exception):
                self.drop_schema(name)
        self.engine.dispose()


def loader_counts(url: str) -> dict[str, Any]:
    """Row counts of the loader's outputs, its rejects, and its revenue total."""
    from loader.warehouse import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            def one(query: str) -> Any:
                return conn.exec_driver_sql(query).scalar()

            return {"sales": one("SELECT count(*) FROM sales"),
                    "daily_sales": one("SELECT count(*) FROM daily_sales"),
                    "customer_summary": one("SELECT count(*) FROM customer_summary"),
                    "rejects": one("SELECT count(*) FROM rejects"),
                    "revenue_aud": str(one("SELECT sum(amount_aud) FROM sales"))}
    finally:
        engine.dispose()


def compare(bench: Bench, dialect: str, what: str, ours: Mapping[str, Any],
            base: Mapping[str, Any]) -> None:
    """Record a mismatch when our row counts differ from the baseline's (on PostgreSQL also
    the exact revenue total; SQLite's baseline computes money in floating point)."""
    problems = [f"{name} {ours[name]} vs {base[name]}"
                for name in ("sales", "daily_sales", "customer_summary")
                if int(ours[name]) != int(base[name])]
    if dialect == "postgresql" and revenue_delta(ours, base) != 0:
        problems.append(f"revenue_aud {ours['revenue_aud']} vs {base['revenue_aud']}")
    if problems:
        message = f"{dialect} {what}: loader vs baseline: {'; '.join(problems)}"
        bench.mismatches.append(message)
        log(f"  MISMATCH {message}")


def revenue_delta(ours: Mapping[str, Any], base: Mapping[str, Any]) -> Decimal | None:
    """Our revenue total less the baseline's; None when one is not a number."""
    try:
        return Decimal(str(ours["revenue_aud"])) - Decimal(str(base["revenue_aud"]))
    except ArithmeticError:
        return None


# --------------------------------------------------------------------------- runs


def run_baseline(bench: Bench, dialect: str, rep: int, data: Path, target: str,
                 schema: str | None, pg: Postgres | None) -> Sample:
    args = [sys.executable, "-m", "benchmarks.baseline", "--url", target,
            "--data-dir", str(data)]
    if schema:
        args += ["--schema", schema]
    if pg:
        pg.checkpoint()
    result, rss = run_child(args, env=child_env(), timeout=bench.timeout,
                            what=f"{dialect} baseline")
    sample = Sample(dialect, "baseline", rep, float(result["seconds"]), rss_kb=rss,
                    steps=result["steps"], counts=result["counts"])
    bench.samples.append(sample)
    log(f"  baseline: {sample.seconds:.2f} s  ({_mib(rss)} MiB)  "
        f"sales {sample.counts['sales']:,}")
    return sample


def run_phase(bench: Bench, dialect: str, rep: int, phase: str, flow: str, data: Path,
              url: str, base: Sample, pg: Postgres | None, changed: int | None = None) -> Sample:
    if pg:
        pg.checkpoint()
    args = [sys.executable, "-m", "benchmarks.sales_phase", "--url", url, "--flow", flow,
            "--data-dir", str(data)]
    result, rss = run_child(args, env=child_env(), timeout=bench.timeout,
                            what=f"{dialect} {phase}")
    sample = Sample(dialect, phase, rep, float(result["seconds"]), base.seconds, rss,
                    changed=changed, tasks=result["tasks"], stages=result["stages"],
                    counts=loader_counts(url))
    bench.samples.append(sample)
    compare(bench, dialect, f"r{rep} {phase}", sample.counts, base.counts)
    log(f"  {phase}: {sample.seconds:.2f} s  x{sample.seconds / base.seconds:.2f} of baseline"
        f"  ({_mib(rss)} MiB)")
    return sample


def run_from_shell(bench: Bench, dialect: str, rep: int, data: Path, url: str, base: Sample,
                   pg: Postgres | None) -> Sample:
    """A no-op ``sales.refresh`` as a user starts it, ``loader run``, timed from the
    command's start to its exit: interpreter start-up, imports and the migration check
    included. ``steps`` holds the runner's own seconds, as the other phases report."""
    if pg:
        pg.checkpoint()
    args = [LOADER, "run", REFRESH, "--warehouse", url, "-p", f"data_dir={data}", "--json"]
    started = time.perf_counter()
    result, rss = run_child(args, env=child_env(), timeout=bench.timeout,
                            what=f"{dialect} noop from the shell")
    wall = time.perf_counter() - started
    if result.get("status") != "succeeded":
        raise PhaseFailed(f"{dialect} noop from the shell failed: {result.get('error')}",
                          result)
    sample = Sample(dialect, "noop_shell", rep, wall, base.seconds, rss, changed=0,
                    steps={"runner": float(result["seconds"])}, counts=loader_counts(url))
    bench.samples.append(sample)
    compare(bench, dialect, f"r{rep} noop from the shell", sample.counts, base.counts)
    log(f"  noop from the shell: {wall:.2f} s (the runner's {result['seconds']:.2f} s)"
        f"  ({_mib(rss)} MiB)")
    return sample


def _dt(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def stage_bounds(tasks: Sequence[Mapping[str, Any]],
                 names: Sequence[str]) -> tuple[float, float]:
    """The earliest start and the latest end of the named tasks, in epoch seconds (the
    history holds naive UTC times); NaN when none ended."""
    chosen = [t for t in tasks if t["task"] in names and t["ended_at"] is not None]
    if not chosen:
        return float("nan"), float("nan")

    def epoch(value: Any) -> float:
        return _dt(value).replace(tzinfo=UTC).timestamp()

    return (min(epoch(t["started_at"]) for t in chosen),
            max(epoch(t["ended_at"]) for t in chosen))


def run_distributed(bench: Bench, rep: int, count: int, data: Path, pg: Postgres,
                    base: Sample) -> None:
    """``sales.nightly`` on an empty schema with ``count`` Redis workers."""
    import redis

    from loader import history
    from loader.warehouse import Warehouse

    schema = pg.new_schema(f"w{count}r{rep}")
    url = pg.schema_url(schema)
    environ = child_env(LOADER_BROKER_URL=bench.args.redis, LOADER_WAREHOUSE_URL=url)
    client = redis.Redis.from_url(bench.args.redis)
    try:
        reset_redis(client)
        with workers(environ, count, bench.work) as pids:
            pg.checkpoint()
            with metered() as meter:
                result, rss = run_child(
                    [LOADER, "run", NIGHTLY, "-p", f"data_dir={data}", "--json"], env=environ,
                    timeout=bench.timeout, what=f"nightly on {count} worker(s)")
            worker_rss = max(tree_hwm_kb(pid) for pid in pids)
        if result.get("status") != "succeeded":
            raise PhaseFailed(f"nightly on {count} worker(s) failed: {result.get('error')}",
                              result)
        stages: list[list[str]] = []
        for state in result["tasks"]:
            while len(stages) <= int(state["stage"]):
                stages.append([])
            stages[int(state["stage"])].append(state["task"])
        wh = Warehouse(url, migrate=False)
        try:
            with wh.begin() as conn:
                tasks = [{k: t[k] for k in ("task", "worker", "status", "started_at",
                                            "ended_at", "seconds", "rows_read", "inserted",
                                            "updated", "deleted", "rejected")}
                         for t in history.task_runs(conn, int(result["run_id"]))]
        finally:
            wh.dispose()
        start, end = stage_bounds(tasks, stages[0])
        sample = Sample("postgresql", f"workers{count}", rep, float(result["seconds"]),
                        base.seconds, rss, worker_rss, end - start,
                        None if meter is None else meter.cores_busy(start, end),
                        tasks=tasks, stages=stages, counts=loader_counts(url))
        bench.samples.append(sample)
        compare(bench, "postgresql", f"r{rep} nightly on {count} worker(s)", sample.counts,
                base.counts)
        cores = ("" if sample.extract_cores is None
                 else f" with {sample.extract_cores:.2f} cores busy")
        log(f"  nightly on {count} worker(s): {sample.seconds:.2f} s, extract stage "
            f"{sample.extract:.2f} s{cores}  (client {_mib(rss)} MiB, worker "
            f"{_mib(worker_rss)} MiB)")
    finally:
        reset_redis(client)
        client.close()
        pg.drop_schema(schema)


def shop_now(data: Path) -> datetime:
    """Now, or a second after the latest ``updated_at`` in shop.db when the clock is behind."""
    con = sqlite3.connect(f"file:{data / 'shop.db'}?mode=ro", uri=True)
    try:
        latest = max(filter(None, (con.execute(f"SELECT max(updated_at) FROM {t}").fetchone()[0]
                                   for t in ("customers", "products", "fx_rates"))))
    finally:
        con.close()
    now = datetime.now(UTC)
    floor = datetime.fromisoformat(str(latest)).replace(tzinfo=UTC) + timedelta(seconds=1)
    return max(now, floor)


def repetition(bench: Bench, dialect: str, rep: int, pg: Postgres | None,
               base_target: str, base_schema: str | None, with_workers: bool) -> bool:
    """One repetition on a fresh copy of the data: every phase, each after its baseline.

    Returns False when a run failed (recorded in ``bench.failures``; the phases after it
    in this repetition are skipped, since each builds on the one before).
    """
    where = bench.work / f"{dialect}-r{rep}"
    data = where / "data"
    shutil.copytree(bench.pristine, data)
    schema = pg.new_schema(f"r{rep}") if pg else None
    url = pg.schema_url(schema) if pg and schema else f"sqlite:///{where / 'warehouse.db'}"
    log(f"[{dialect} r{rep + 1}/{bench.args.repeat}]")
    step = "baseline"
    try:
        base = run_baseline(bench, dialect, rep, data, base_target, base_schema, pg)
        step = "nightly_empty"
        run_phase(bench, dialect, rep, step, NIGHTLY, data, url, base, pg)
        if with_workers and pg:
            for count in WORKER_COUNTS:
                step = f"workers{count}"
                run_distributed(bench, rep, count, data, pg, base)
        step = "noop"
        run_phase(bench, dialect, rep, step, REFRESH, data, url, base, pg, changed=0)
        step = "noop_shell"
        run_from_shell(bench, dialect, rep, data, url, base, pg)
        for k, fraction in enumerate(FRACTIONS):
            edited = edit_sales(data, fraction, 1000 * rep + k)["edited"]
            step = "baseline"
            base = run_baseline(bench, dialect, rep, data, base_target, base_schema, pg)
            step = f"edit_{fraction:g}"
            run_phase(bench, dialect, rep, step, REFRESH, data, url, base, pg, changed=edited)
        now = shop_now(data)
        correct_fx(data, bench.fx_changes, 2000 + rep, now)
        change_segments(data, bench.segment_changes, 3000 + rep, now)
        step = "baseline"
        base = run_baseline(bench, dialect, rep, data, base_target, base_schema, pg)
        step = "shop"
        run_phase(bench, dialect, rep, step, REFRESH, data, url, base, pg,
                  changed=bench.fx_changes + bench.segment_changes)
        step = "nightly_correct"
        run_phase(bench, dialect, rep, step, NIGHTLY, data, url, base, pg)
        return True
    except PhaseFailed as exc:
        bench.failures.append({"dialect": dialect, "rep": rep, "phase": step,
                               "error": str(exc).split("\n", 1)[0],
                               "seconds": exc.result.get("seconds"),
                               "tasks": exc.result.get("tasks", [])})
        log(f"  FAILED {dialect} r{rep + 1} {step}: {exc}")
        return False
    finally:
        if pg and schema:
            pg.drop_schema(schema)
        shutil.rmtree(where, ignore_errors=True)


def run_dialect(bench: Bench, dialect: str, pg: Postgres | None, with_workers: bool) -> None:
    base_schema = pg.new_schema("baseline") if pg else None
    base_target = pg.url if pg else f"sqlite:///{bench.work / 'baseline.db'}"
    try:
        for rep in range(bench.args.repeat):
            if not repetition(bench, dialect, rep, pg, base_target, base_schema, with_workers):
                if rep + 1 < bench.args.repeat:
                    bench.notes.append(f"{DIALECT_LABEL[dialect]}: repetitions after "
                                       f"{rep + 1} skipped after the failure.")
                break
    finally:
        if pg and base_schema:
            pg.drop_schema(base_schema)
        for suffix in ("", "-wal", "-shm"):
            (bench.work / f"baseline.db{suffix}").unlink(missing_ok=True)


# --------------------------------------------------------------------------- setup


def scale_for(args: argparse.Namespace) -> Scale:
    if args.quick:
        return Scale.quick()
    rows = args.rows if args.rows is not None else Scale.bench().sales
    return dataclasses.replace(Scale.bench(), sales=rows, customers=max(200, rows // 10),
                               products=max(50, rows // 100))


def code_state() -> str:
    """The commit of the loader's code and the files under loader/ and flows/ that differ."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "loader", "flows")
               .splitlines() if line.strip()]
    if not changed:
        return f"commit {commit}, no uncommitted changes under loader/ and flows/"
    import hashlib

    digest = hashlib.sha1(git("diff", "HEAD", "--", "loader", "flows").encode()).hexdigest()
    return (f"commit {commit} with uncommitted changes (diff sha1 {digest[:10]}) in: "
            + ", ".join(f"`{name}`" for name in changed))


OWNER_KEY = "loader-bench:owner"
OWNER = f"{os.uname().nodename}:{os.getpid()}"


def claim_redis(url: str) -> str | None:
    """Claim the Redis database for this invocation; None when claimed, else why not.

    Two invocations on one database would take each other's tasks (and flush each
    other's queues), so the second one runs without workers.
    """
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        try:
            if not client.set(OWNER_KEY, OWNER, nx=True, ex=12 * 3600):
                owner = client.get(OWNER_KEY)
                return (f"{url} is in use by another benchmark ({owner!r}); pass --redis "
                        "with another database")
        finally:
            client.close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def reset_redis(client: Any) -> None:
    """Empty the claimed database (stale messages of an interrupted run), keeping the claim."""
    client.flushdb()
    client.set(OWNER_KEY, OWNER, ex=12 * 3600)


def release_redis(url: str) -> None:
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        if client.get(OWNER_KEY) == OWNER.encode():
            client.delete(OWNER_KEY)
        client.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
        epilog="Environment: LOADER_BENCH_PG_URL, LOADER_BENCH_REDIS_URL.")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="Scale.quick(): 2,000 sales over 30 days, as a smoke run")
    size.add_argument("--rows", type=int, help="sales rows (default 1,000,000; customers "
                      "rows/10, products rows/100, 3 years of days)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--dialects", default=",".join(DIALECTS),
                        help="comma-separated: postgresql,sqlite (default both)")
    parser.add_argument("--no-workers", action="store_true",
                        help="skip the runs on Redis workers")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh "
                        "schema per warehouse, dropped at the end)")
    parser.add_argument("--redis", default=DEFAULT_REDIS,
                        help="Redis database for the workers; it is FLUSHED (default db 13)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed per child run (default 900 + rows / 80)")
    args = parser.parse_args(argv)
    dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    unknown = [d for d in dialects if d not in DIALECTS]
    if unknown or not dialects:
        parser.error(f"--dialects takes postgresql and/or sqlite, not {args.dialects!r}")
    args.dialects = dialects
    if args.repeat < 1 or (args.rows is not None and args.rows < 1_000):
        parser.error("--repeat must be >= 1 and --rows >= 1000")
    return args


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # On SIGTERM (e.g. from `timeout`) unwind like Ctrl-C: kill the child run and the
    # workers, drop the schemas, remove the temporary directory.
    signal.signal(signal.SIGTERM, _terminated)
    command = shlex.join(["python", "-m", "benchmarks",
                          *(sys.argv[1:] if argv is None else argv)])
    scale = scale_for(args)
    if args.timeout is None:
        args.timeout = 900 + scale.sales / 80
    from benchmarks import sales_report

    versions: dict[str, str] = {"code": code_state()}
    bench_load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="sales_bench_"))
    bench = Bench(args, scale, work, work / "pristine")
    pg: Postgres | None = None
    try:
        started = time.perf_counter()
        log(f"generating {scale.sales:,} sales rows, {scale.customers:,} customers, "
            f"{scale.products:,} products, {scale.days} days in {work} ...")
        generate(bench.pristine, scale)
        bench.generate_seconds = time.perf_counter() - started
        with sqlite3.connect(bench.pristine / "shop.db") as con:
            fx_rows = con.execute("SELECT count(*) FROM fx_rates").fetchone()[0]
        bench.fx_changes = max(1, min(50, fx_rows // 10))
        bench.segment_changes = max(1, scale.customers // 100)
        workers_wanted = not args.no_workers and "postgresql" in args.dialects
        redis_problem = claim_redis(args.redis) if workers_wanted else None
        if redis_problem:
            bench.notes.append(f"Runs on Redis workers skipped: {redis_problem}.")
            log(f"no runs on workers: {redis_problem}")
        with_workers = workers_wanted and redis_problem is None
        if "postgresql" in args.dialects:
            pg = Postgres(bench, args.pg_url)
            versions["PostgreSQL"] = pg.version()
        if with_workers:
            import redis

            versions["Redis"] = str(redis.Redis.from_url(args.redis).info("server")
                                    ["redis_version"])
        for dialect in args.dialects:
            run_dialect(bench, dialect, pg if dialect == "postgresql" else None, with_workers)
    finally:
        if pg:
            pg.dispose()
        release_redis(args.redis)
        shutil.rmtree(work, ignore_errors=True)
    at_end = code_state()
    if at_end != versions["code"]:
        bench.notes.append(f"The loader's code changed during the run; at the end: {at_end}.")
    bench.notes.append("Load average (1, 5, 15 min) at the start: "
                       + ", ".join(f"{x:.1f}" for x in bench_load) + "; at the end: "
                       + ", ".join(f"{x:.1f}" for x in os.getloadavg())
                       + f" (nproc {os.cpu_count()}): other work on the machine inflates "
                       "and scatters the figures.")
    markdown = sales_report.write(bench, command, versions)
    print(markdown)
    if bench.mismatches or bench.failures:
        log(f"{len(bench.failures)} failed run(s), {len(bench.mismatches)} mismatch(es) "
            "between the loader and the baseline")
        sys.exit(1)


def _mib(kb: int | None) -> str:
    return "?" if kb is None else f"{kb / 1024:.0f}"


if __name__ == "__main__":
    main()
