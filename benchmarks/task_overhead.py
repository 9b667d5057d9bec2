"""Benchmark: what a task costs, in-process and on Redis workers, and what a second worker buys.

Run ``python -m benchmarks.task_overhead [--tasks N] [--rows R] [--repeat K]``. Two parts,
each run through the ``loader`` command (as a user would) against a fresh PostgreSQL
schema per run:

1. **Per-task overhead.** A flow of N sequential tasks of an empty processor (its ``run``
   only returns a Result) and a flow of one such task; the overhead per task is
   ``(T(N) - T(1)) / (N - 1)``, in-process (embedded worker, no broker) and on Redis with
   one ``loader worker --concurrency 1``. The time of a run is the runner's own
   ``seconds`` (from the lock to the last task's end, not the process start-up). The
   history gives the split: time inside the task body (history rows, dedup check,
   processor) and the gap between one task's end and the next one's start (dispatch).
2. **Parallel tasks.** One group of 4 independent CSV extracts, each loading one
   region file of a generated sales directory of R rows (R/4 each) into PostgreSQL, on
   one Redis worker and on two, and in-process (the embedded worker's 4 threads) for
   reference; then the same with 4 CPU-bound toy tasks (pure Python, no database), which
   shows what a second worker buys when the warehouse is not competing for the CPUs.

It prints a Markdown table, the command, the machine and the versions. This is a
benchmark, not a test: it fails only when a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa

from benchmarks._workers import workers
from loader.salesdata import Scale, generate, sales_files

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/14"
LOADER = str(Path(sys.executable).with_name("loader"))
REGIONS = ("north", "south", "east", "west")

FLOWS = '''
    """Flows of the task overhead benchmark (written by benchmarks/task_overhead.py)."""
    from dataclasses import dataclass

    from celery import chain, group

    from loader import CsvSnapshot, Field, Flow, Result, step
    from loader.sources.csvfile import parse_code, parse_decimal, parse_int, parse_timestamp


    @dataclass(frozen=True)
    class Empty:
        name: str
        reads: tuple = ()
        provides: tuple = ()
        version: str = "1"

        def run(self, ctx):
            return Result()


    def empty_chain(count):
        tasks = [Empty(f"bench_empty_{{i:03d}}") for i in range(count)]
        return Flow(chain(*(step(t) for t in tasks)) if count > 1 else step(tasks[0]),
                    mode="full")


    def burn(loops):
        n = 0
        for _ in range(loops):
            n += sum(i * i for i in range(1000)) & 1
        return n


    @dataclass(frozen=True)
    class Spin:
        name: str
        loops: int
        reads: tuple = ()
        provides: tuple = ()
        version: str = "1"

        def run(self, ctx):
            return Result(rows_read=burn(self.loops))


    spin = Flow(group(*(step(Spin(f"bench_spin_{{i}}", {loops})) for i in range(4))),
                mode="full")
    empty_1 = empty_chain(1)
    empty_n = empty_chain({tasks})

    FIELDS = (
        Field("txn_id"),
        Field("sold_at", "timestamp", parse_timestamp, nullable=False),
        Field("store_id"),
        Field("customer_id"),
        Field("sku"),
        Field("quantity", "integer", parse_int, nullable=False),
        Field("unit_price", "decimal:4", parse_decimal(4), nullable=False),
        Field("currency", "text", parse_code(3), nullable=False),
    )
    extracts = Flow(group(*(
        step(CsvSnapshot(name=f"bench_extract_{{region}}", table=f"bench_sales_{{region}}",
                         pattern="sales_{{region}}.csv", key=("region", "txn_id"),
                         fields=FIELDS,
                         directory_param=f"dir_{{region}}"))
        for region in {regions!r})), mode="full",
        params=tuple(f"dir_{{region}}" for region in {regions!r}))
'''


def env(**settings: Any) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOADER_")}
    base.update({k: str(v) for k, v in settings.items() if v is not None})
    return base


@contextlib.contextmanager
def schema(url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards; yields a URL that uses it."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        admin.dispose()


def run(environ: Mapping[str, str], flow: str, params: Mapping[str, str], url: str,
        count: int, logs: Path) -> dict[str, Any]:
    """One ``loader run`` on a fresh schema (and fresh workers, ``count`` of them, when
    ``environ`` names a broker): the runner's seconds and the history's split."""
    with schema(url) as where, contextlib.ExitStack() as stack:
        environ = {**environ, "LOADER_WAREHOUSE_URL": where}
        engine = sa.create_engine(where)
        stack.callback(engine.dispose)
        if count:
            redis.Redis.from_url(environ["LOADER_BROKER_URL"]).flushdb()
            stack.enter_context(workers(environ, count, logs))
        args = [LOADER, "run", flow, "--json"]
        for key, value in params.items():
            args += ["-p", f"{key}={value}"]
        started = time.perf_counter()
        done = subprocess.run(args, env=environ, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{flow} failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        with engine.connect() as conn:
            tasks = conn.exec_driver_sql(
                "SELECT started_at, ended_at, seconds FROM loader_task_runs "
                "ORDER BY started_at").all()
            rows = 0
            if flow.endswith("extracts"):
                rows = sum(conn.exec_driver_sql(
                    f"SELECT count(*) FROM bench_sales_{region}").scalar_one()
                    for region in REGIONS)
    body = [(t.ended_at - t.started_at).total_seconds() for t in tasks]
    gaps = [(b.started_at - a.ended_at).total_seconds() for a, b in itertools.pairwise(tasks)]
    step = ((tasks[-1].started_at - tasks[0].started_at).total_seconds() / (len(tasks) - 1)
            if len(tasks) > 1 else 0.0)
    return {"seconds": float(report["seconds"]), "wall": wall, "tasks": len(tasks),
            "body": statistics.fmean(body) if body else 0.0,
            "processor": statistics.fmean(t.seconds for t in tasks) if tasks else 0.0,
            "gap": statistics.fmean(gaps) if gaps else 0.0, "step": step, "rows": rows}


def median_run(repeat: int, *args: Any) -> dict[str, Any]:
    results = sorted((run(*args) for _ in range(repeat)), key=lambda r: r["seconds"])
    return results[len(results) // 2]


def calibrate(seconds: float) -> int:
    """How many loops of the toy task's work take ``seconds`` here, on one idle core."""
    loops, took = 10, 0.0
    while took < 0.2:
        loops *= 2
        started = time.perf_counter()
        for _ in range(loops):
            sum(i * i for i in range(1000))
        took = time.perf_counter() - started
    return max(1, round(loops * seconds / took))


def versions(url: str, broker: str) -> str:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        pg = conn.exec_driver_sql("SHOW server_version").scalar_one()
    engine.dispose()
    redis_version = redis.Redis.from_url(broker).info("server")["redis_version"]
    packages = ", ".join(f"{name} {version(name)}" for name in
                         ("celery", "kombu", "redis", "SQLAlchemy", "psycopg"))
    return (f"Python {platform.python_version()}, {packages}; "
            f"PostgreSQL {pg}, Redis server {redis_version}")


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.system()} {platform.machine()}, nproc {nproc}, {model or 'unknown CPU'}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50, help="tasks in the empty chain")
    parser.add_argument("--rows", type=int, default=400_000, help="rows of the 4 region files")
    parser.add_argument("--spin", type=float, default=2.0,
                        help="seconds of each of the 4 CPU-bound toy tasks")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--url", default=os.environ.get("LOADER_BENCH_PG_URL", DEFAULT_URL))
    parser.add_argument("--redis", default=os.environ.get("LOADER_BENCH_REDIS_URL",
                                                          DEFAULT_REDIS))
    args = parser.parse_args(argv)
    if args.tasks < 2:
        parser.error("--tasks must be at least 2")

    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="task_overhead_"))
    try:
        flows = work / "flows"
        flows.mkdir()
        (flows / "benchflows.py").write_text(textwrap.dedent(
            FLOWS.format(tasks=args.tasks, regions=REGIONS, loops=calibrate(args.spin))))
        data = work / "data"
        started = time.perf_counter()
        generate(data, Scale(sales=args.rows, customers=2_000, products=300, days=90,
                             bad_rows=False, quirks=False))
        print(f"generated {args.rows:,} rows in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
        dirs = {}
        for region, path in sales_files(data).items():
            own = work / f"dir_{region}"
            own.mkdir()
            (own / path.name).symlink_to(path)
            dirs[f"dir_{region}"] = str(own)

        local = env(LOADER_FLOWS=flows)
        broker = env(LOADER_FLOWS=flows, LOADER_BROKER_URL=args.redis)
        results: dict[str, dict[str, Any]] = {}

        def measure(key: str, environ: Mapping[str, str], flow: str,
                    params: Mapping[str, str], repeat: int, count: int = 0) -> None:
            print(f"  {key} ...", file=sys.stderr, flush=True)
            results[key] = median_run(repeat, environ, flow, params, args.url, count, work)

        measure("in-process 1", local, "benchflows.empty_1", {}, args.repeat)
        measure("in-process N", local, "benchflows.empty_n", {}, args.repeat)
        measure("redis 1", broker, "benchflows.empty_1", {}, args.repeat, 1)
        measure("redis N", broker, "benchflows.empty_n", {}, args.repeat, 1)
        measure("in-process extracts", local, "benchflows.extracts", dirs, 1)
        measure("1 worker extracts", broker, "benchflows.extracts", dirs, args.repeat, 1)
        measure("2 workers extracts", broker, "benchflows.extracts", dirs, args.repeat, 2)
        measure("in-process spin", local, "benchflows.spin", {}, 1)
        measure("1 worker spin", broker, "benchflows.spin", {}, args.repeat, 1)
        measure("2 workers spin", broker, "benchflows.spin", {}, args.repeat, 2)
        redis.Redis.from_url(args.redis).flushdb()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.tasks
    per = {mode: (results[f"{mode} N"]["seconds"] - results[f"{mode} 1"]["seconds"]) / (n - 1)
           for mode in ("in-process", "redis")}
    print(f"\n### Task overhead: {n} sequential empty tasks (median of {args.repeat})\n")
    print("| mode | run of 1 task (s) | run of N tasks (s) | overhead per task (s) "
          "| task start to next start (s) | in task body (s) | dispatch gap (s) "
          "| start to start, ratio to in-process |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode, label in (("in-process", "in-process (embedded worker)"),
                        ("redis", "Redis, 1 worker")):
        many = results[f"{mode} N"]
        print(f"| {label} | {results[f'{mode} 1']['seconds']:.3f} | {many['seconds']:.3f} "
              f"| {per[mode]:.4f} | {many['step']:.4f} | {many['body']:.4f} "
              f"| {many['gap']:.4f} "
              f"| {many['step'] / results['in-process N']['step']:.2f} |")
    for part, title in (
            ("extracts", f"4 independent extracts: {args.rows:,} rows, {args.rows // 4:,} "
                         "per file, into PostgreSQL"),
            ("spin", f"4 independent CPU-bound toy tasks: about {args.spin:g} s of Python "
                     "each (a fixed amount of work)")):
        one = results[f"1 worker {part}"]["seconds"]
        print(f"\n### {title} (median of {args.repeat}; in-process run once)\n")
        print("| mode | seconds | rows loaded | mean task (s) | speed-up vs 1 worker |")
        print("|---|---:|---:|---:|---:|")
        for key, label in ((f"in-process {part}", "in-process (embedded, 4 threads)"),
                           (f"1 worker {part}", "Redis, 1 worker"),
                           (f"2 workers {part}", "Redis, 2 workers")):
            found = results[key]
            print(f"| {label} | {found['seconds']:.2f} | {found['rows']:,} "
                  f"| {found['body']:.2f} | {one / found['seconds']:.2f} |")
    command = " ".join(["python -m benchmarks.task_overhead", *sys.argv[1:]])
    print(f"\nCommand: `{command}`")
    print(f"\nMachine: {machine()}; load average (1 min) {load[0]:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end")
    print(f"\nVersions: {versions(args.url, args.redis)}")
    from loader.runner import POLL_BROKER

    print("\nSeconds are the runner's own (lock taken to the watcher seeing the last task "
          f"done; in-process it wakes as each task ends, with workers it polls every "
          f"{POLL_BROKER} s), not process start-up. Overhead per task is "
          "(T(N) - T(1)) / (N - 1); the next three columns come from the history of the "
          "N-task run: mean start-to-start of consecutive tasks, a task run's recorded "
          "start to end (history rows, dedup check, processor), and one task's end to the "
          "next one's start (dispatch).")


if __name__ == "__main__":
    main()
