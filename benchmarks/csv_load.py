"""Benchmark: CSV snapshot loads on PostgreSQL against a raw ``COPY`` of the same file.

Run ``python -m benchmarks.csv_load [--rows N] [--repeat K] [--url URL]``. One CSV file of
N rows and 10 columns is generated once; every repetition then measures, side by side in
this process and database:

* a raw ``COPY ... FROM STDIN (FORMAT csv)`` of the file into a fresh plain table (the
  baseline), and the same into a table with a primary key on ``id`` (for information);
* the loader's first load of the file into an empty schema (``mode="refresh"``);
* an unchanged reload with ``mode="refresh"`` (skipped by the file's content hash) and
  with ``mode="full"`` (every record re-read and its hash compared);
* a refresh after 1% of the rows had one or two columns changed.

It prints a Markdown table (median, min and max seconds, ratios to the raw COPY and to
the first load, the target and whether it is met) and the process's peak RSS, and writes
a phase breakdown and a cProfile of one extra first load to
``benchmarks/results/csv_load_profile.txt``. This is a benchmark, not a test: it fails
only when a load fails or loads the wrong counts.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import pstats
import random
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

import loader.bulk
import loader.processors.csv_extract as csv_extract
from loader import CsvSnapshot, Field, Warehouse, run_sequence
from loader.execute import RunOutcome
from loader.sources.csvfile import parse_decimal, parse_int, parse_timestamp

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS = Path(__file__).resolve().parent / "results"
PROFILE_FILE = RESULTS / "csv_load_profile.txt"
FILE_NAME = "events_all.csv"
HEADER = ("id", "ts", "a", "b", "c", "d", "e", "f", "g", "h")
CHANGED_SHARE = 0.01

RAW_COLUMNS = """
    id text, ts timestamptz, a bigint, b bigint, c bigint,
    d numeric(28, 2), e numeric(28, 2), f text, g text, h text
"""


def processor() -> CsvSnapshot:
    """The extract under test: the 10 columns of the file, keyed by partition and id."""
    two = parse_decimal(2)
    return CsvSnapshot("events_csv", "events", "events_{part}.csv", ("part", "id"), (
        Field("id"),
        Field("ts", "timestamp", parse_timestamp, nullable=False),
        Field("a", "integer", parse_int),
        Field("b", "integer", parse_int),
        Field("c", "integer", parse_int),
        Field("d", "decimal:2", two),
        Field("e", "decimal:2", two),
        Field("f"),
        Field("g"),
        Field("h"),
    ))


# --------------------------------------------------------------------------- data


_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
          "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa")
_CODES = tuple(f"{a}{b}{c}" for a in "ABCDEFGH" for b in "KLMNOPQR" for c in "STUVWXYZ")
_OFFSETS = ("+00:00", "+01:00", "+02:00", "-05:00", "+05:30", "-08:00", "Z", "+09:00")
_DAYS = tuple(f"2024-{m:02d}-{d:02d}" for m in range(1, 13) for d in range(1, 29))


def _line(i: int, bits: int) -> str:
    """Row ``i`` of the file, its values derived from 64 random ``bits``."""
    seconds = bits & 0x1FFFF                      # < 86400 after the modulo below
    day = _DAYS[(bits >> 17) % len(_DAYS)]
    hh, rest = divmod(seconds % 86400, 3600)
    mm, ss = divmod(rest, 60)
    ts = f"{day}T{hh:02d}:{mm:02d}:{ss:02d}{_OFFSETS[(bits >> 26) & 7]}"
    a = ((bits >> 29) & 0xFFFFF) - 500_000
    b = (bits >> 20) & 0x3FF
    c = bits >> 24
    d = (((bits >> 8) & 0xFFFFF) - 500_000) / 100
    e = ((bits >> 33) & 0x7FFFFF) / 100
    f = _WORDS[bits & 15]
    g = _CODES[(bits >> 4) % len(_CODES)]
    h = "" if (bits >> 58) == 0 else f"{(bits >> 40) & 0xFFFF:04x}"
    return f"E{i:08d},{ts},{a},{b},{c},{d:.2f},{e:.2f},{f},{g},{h}\n"


def generate(path: Path, rows: int, seed: int = 20240601) -> None:
    """Write the benchmark file: a header and ``rows`` rows, in chunks."""
    rng = random.Random(seed)
    bits = rng.getrandbits
    chunk = 50_000
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(",".join(HEADER) + "\n")
        for start in range(0, rows, chunk):
            out.write("".join([_line(i, bits(64)) for i in range(start, min(rows, start + chunk))]))


def rewrite_changed(source: Path, target: Path, rows: int, seed: int) -> int:
    """Copy ``source`` to ``target`` with 1% of the rows changed in one or two columns.

    Column ``a`` (an integer) always changes; every second chosen row also changes ``f``
    (a text). Returns how many rows changed.
    """
    rng = random.Random(seed)
    chosen = set(rng.sample(range(rows), max(1, int(rows * CHANGED_SHARE))))
    a_at, f_at = HEADER.index("a"), HEADER.index("f")
    with source.open("r", encoding="utf-8", newline="") as src, \
            target.open("w", encoding="utf-8", newline="") as out:
        out.write(next(src))
        buffer: list[str] = []
        for row, line in enumerate(src):
            if row in chosen:
                parts = line.rstrip("\n").split(",")
                parts[a_at] = str(int(parts[a_at]) + 1 + rng.randrange(1000))
                if row & 1:
                    parts[f_at] = parts[f_at] + "x"
                line = ",".join(parts) + "\n"
            buffer.append(line)
            if len(buffer) >= 50_000:
                out.write("".join(buffer))
                buffer.clear()
        out.write("".join(buffer))
    return len(chosen)


# --------------------------------------------------------------------------- database


@dataclass
class Database:
    """The server the benchmark runs on, and the schemas it created there."""

    url: str
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.engine = sa.create_engine(self.url)
        parsed = sa.make_url(self.url)
        self.conninfo: dict[str, Any] = {
            k: v for k, v in {"host": parsed.host, "port": parsed.port, "user": parsed.username,
                              "password": parsed.password, "dbname": parsed.database}.items()
            if v is not None
        }

    def new_schema(self, tag: str) -> str:
        schema = f"bench_{uuid.uuid4().hex[:8]}_{tag}"
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        self.created.append(schema)
        return schema

    def drop_schema(self, schema: str) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        self.created.remove(schema)

    def drop_all(self) -> None:
        for schema in list(self.created):
            self.drop_schema(schema)
        self.engine.dispose()

    def schema_url(self, schema: str) -> str:
        base = sa.make_url(self.url).difference_update_query(["options"])
        rendered = base.render_as_string(hide_password=False)
        sep = "&" if "?" in rendered else "?"
        return f"{rendered}{sep}options=-csearch_path%3D{schema}"

    def connect(self, schema: str) -> psycopg.Connection[Any]:
        return psycopg.connect(**self.conninfo,
                               options=f"-c search_path={schema} -c timezone=UTC")

    def checkpoint(self) -> None:
        """Start each heavy step from a clean checkpoint, when allowed (superuser)."""
        with contextlib.suppress(sa.exc.DBAPIError), self.engine.connect() as conn:
            conn.exec_driver_sql("CHECKPOINT")


def raw_copy(db: Database, schema: str, path: Path, *, primary_key: bool = False) -> float:
    """Seconds to COPY ``path`` into a fresh plain table (created and committed first)."""
    table = "raw_events_pk" if primary_key else "raw_events"
    columns = RAW_COLUMNS + (", PRIMARY KEY (id)" if primary_key else "")
    with db.connect(schema) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} ({columns})")
        conn.commit()
        db.checkpoint()
        started = time.perf_counter()
        with conn.cursor() as cursor, \
                cursor.copy(f"COPY {table} FROM STDIN WITH (FORMAT csv, HEADER true)") as copy, \
                path.open("rb") as source:
            while chunk := source.read(1 << 20):
                copy.write(chunk)
        conn.commit()
        seconds = time.perf_counter() - started
        conn.execute(f"DROP TABLE {table}")
        conn.commit()
    return seconds


# --------------------------------------------------------------------------- memory


class Memory:
    """Peak RSS per step (Linux: reset through /proc/self/clear_refs) and for the process."""

    def __init__(self) -> None:
        self.process_peak_kb = 0
        self.resettable = True
        self.start_kb = 0

    def reset(self) -> None:
        self.process_peak_kb = max(self.process_peak_kb, self._maxrss())
        if self.resettable:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.resettable = False
        self.start_kb = self._rss()

    def peak_kb(self) -> tuple[int, int] | None:
        """The peak since the last reset and the RSS then, or None where not resettable."""
        value = self._maxrss()
        self.process_peak_kb = max(self.process_peak_kb, value)
        return (value, self.start_kb) if self.resettable else None

    @staticmethod
    def _maxrss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux

    @staticmethod
    def _rss() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


# --------------------------------------------------------------------------- steps


@dataclass
class Step:
    label: str
    target: str = ""
    check: Callable[[float, float, float], bool] | None = None  # (median, raw, first)
    seconds: list[float] = field(default_factory=list)
    peaks_kb: list[tuple[int, int]] = field(default_factory=list)  # (peak, start)
    notes: list[str] = field(default_factory=list)


def timed_run(wh: Warehouse, data_dir: Path, mode: str, memory: Memory) -> tuple[float, RunOutcome]:
    memory.reset()
    started = time.perf_counter()
    outcome = run_sequence(wh, [processor()], mode=mode,  # type: ignore[arg-type]
                           params={"data_dir": str(data_dir)})
    seconds = time.perf_counter() - started
    if outcome.status != "succeeded":
        raise RuntimeError(f"{mode} run failed: {outcome.error}\n{outcome.traceback}")
    return seconds, outcome


def expect(what: str, actual: object, wanted: object) -> None:
    if actual != wanted:
        raise RuntimeError(f"{what}: expected {wanted!r}, got {actual!r}")


def record(step: Step, seconds: float, memory: Memory) -> None:
    step.seconds.append(seconds)
    peak = memory.peak_kb()
    if peak is not None:
        step.peaks_kb.append(peak)


def repetition(db: Database, rep: int, rows: int, base: Path, data_dir: Path,
               steps: dict[str, Step], memory: Memory, raw_schema: str) -> None:
    target = data_dir / FILE_NAME
    shutil.copyfile(base, target)

    memory.reset()
    record(steps["raw"], raw_copy(db, raw_schema, target), memory)
    memory.reset()
    record(steps["raw_pk"], raw_copy(db, raw_schema, target, primary_key=True), memory)

    schema = db.new_schema(f"r{rep}")
    wh = Warehouse(db.schema_url(schema))            # migrations run here, untimed
    try:
        db.checkpoint()
        seconds, outcome = timed_run(wh, data_dir, "refresh", memory)
        result = outcome.results["events_csv"]
        expect("first load inserted", (result.inserted, result.rejected), (rows, 0))
        record(steps["first"], seconds, memory)

        seconds, outcome = timed_run(wh, data_dir, "refresh", memory)
        result = outcome.results["events_csv"]
        expect("unchanged refresh skipped", result.details.get("unchanged"), [FILE_NAME])
        record(steps["refresh"], seconds, memory)

        seconds, outcome = timed_run(wh, data_dir, "full", memory)
        result = outcome.results["events_csv"]
        expect("unchanged full reload", (result.rows_read, result.inserted, result.updated,
                                         result.deleted), (rows, 0, 0, 0))
        record(steps["full"], seconds, memory)

        changed = rewrite_changed(base, target, rows, seed=1000 + rep)
        seconds, outcome = timed_run(wh, data_dir, "refresh", memory)
        result = outcome.results["events_csv"]
        expect("changed refresh", (result.inserted, result.updated, result.deleted),
               (0, changed, 0))
        record(steps["changed"], seconds, memory)
        with wh.begin() as conn:
            live = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
        expect("live rows after the changed refresh", live, rows)
    finally:
        wh.dispose()
        db.drop_schema(schema)


# --------------------------------------------------------------------------- profile


@contextlib.contextmanager
def patched(owner: Any, name: str, wrap: Callable[[Any], Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


STREAM = "read + hash records, parse changed ones, stream them to the stage COPY"
PREVIOUS = "SELECT the stored hashes into a set"
STAGE_DDL = "create/drop temporary stage tables"
FINISH = "finish COPY to stage"
UPSERT = "merge: upsert SQL (stage -> tracked table)"
GONE = "find and soft-delete vanished keys"
DIGEST = "file digest (sha256 of the file)"
DIGEST_THREAD = "file digest on a second thread, beside that SELECT (file of another size)"
ENSURE = "ensure_table (create table, view, registry)"
LOAD = "_FileLoad.load"
SLOW_SQL = 0.05


@dataclass
class Phases:
    """Wall-clock time per phase of one run, and its slow SQL statements."""

    label: str
    total: float = 0.0
    spent: dict[str, float] = field(default_factory=dict)
    statements: list[tuple[float, str]] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.spent[name] = self.spent.get(name, 0.0) + seconds


class PhaseTimer:
    """Light timers wrapped around the loader's phases (no profiler, a few calls per run).

    Only the benchmark's process is patched, for the duration of ``active()``; the
    loader's code is not changed.
    """

    def __init__(self) -> None:
        self.now = Phases("")

    def timer(self, name: str | Callable[[], str]) -> Callable[[Any], Any]:
        """Time a function under ``name``, or under the name ``name()`` gives when the
        call ends (on the thread that made it)."""
        def wrap(func: Any) -> Any:
            @functools.wraps(func)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return func(*args, **kwargs)
                finally:
                    self.now.add(name if isinstance(name, str) else name(),
                                 time.perf_counter() - started)
            return timed
        return wrap

    def digest_timer(self, func: Any) -> Any:
        """The file digest: on the main thread, or on a second one beside the SELECT."""
        return self.timer(lambda: DIGEST if threading.current_thread()
                          is threading.main_thread() else DIGEST_THREAD)(func)

    def stage_timer(self, func: Any) -> Any:
        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            started = time.perf_counter()
            manager = func(*args, **kwargs)
            table = manager.__enter__()
            self.now.add(STAGE_DDL, time.perf_counter() - started)
            try:
                yield table
            except BaseException:
                if not manager.__exit__(*sys.exc_info()):
                    raise
            else:
                started = time.perf_counter()
                manager.__exit__(None, None, None)
                self.now.add(STAGE_DDL, time.perf_counter() - started)
        return timed

    def writer_timer(self, func: Any) -> Any:
        @contextlib.contextmanager
        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with func(*args, **kwargs) as put:
                started = time.perf_counter()
                yield put
                self.now.add(STREAM, time.perf_counter() - started)
                started = time.perf_counter()
            self.now.add(FINISH, time.perf_counter() - started)
        return timed

    def listen(self, engine: sa.Engine) -> None:
        @sa.event.listens_for(engine, "before_cursor_execute")
        def before(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            conn.info.setdefault("bench_started", []).append(time.perf_counter())

        @sa.event.listens_for(engine, "after_cursor_execute")
        def after(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
            seconds = time.perf_counter() - conn.info["bench_started"].pop()
            if seconds >= SLOW_SQL:
                self.now.statements.append((seconds, " ".join(statement.split())))

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        with patched(csv_extract, "_file_digest", self.digest_timer), \
                patched(csv_extract, "_stored_hashes", self.timer(PREVIOUS)), \
                patched(csv_extract, "ensure_table", self.timer(ENSURE)), \
                patched(csv_extract, "upsert", self.timer(UPSERT)), \
                patched(csv_extract, "delete_hashes", self.timer(GONE)), \
                patched(loader.bulk, "stage", self.stage_timer), \
                patched(loader.bulk, "writer", self.writer_timer), \
                patched(csv_extract.pg_bulk, "text_writer", self.writer_timer), \
                patched(csv_extract._FileLoad, "load", self.timer(LOAD)):
            yield

    def run(self, label: str, wh: Warehouse, data_dir: Path, mode: str,
            memory: Memory) -> Phases:
        self.now = Phases(label)
        with self.active():
            self.now.total, _ = timed_run(wh, data_dir, mode, memory)
        load = self.now.spent.pop(LOAD, 0.0)
        inside = sum(self.now.spent.get(k, 0.0)
                     for k in (STAGE_DDL, STREAM, FINISH, UPSERT, GONE))
        # The digest on a second thread overlaps the SELECT beside it: not counted twice.
        outside = sum(self.now.spent.get(k, 0.0) for k in (DIGEST, PREVIOUS, ENSURE))
        self.now.spent["rest of _FileLoad.load (vanished-key scan, counts)"] = load - inside
        self.now.spent["rest of the run (lease, history, registry, commit)"] = (
            self.now.total - load - outside)
        return self.now


def phase_timings(db: Database, base: Path, data_dir: Path, rows: int,
                  memory: Memory) -> list[Phases]:
    """A first load, an unchanged full reload and a 1%-changed refresh, with phase timers."""
    timer = PhaseTimer()
    target = data_dir / FILE_NAME
    shutil.copyfile(base, target)
    schema = db.new_schema("phases")
    wh = Warehouse(db.schema_url(schema))
    timer.listen(wh.engine)
    try:
        db.checkpoint()
        runs = [timer.run("first load", wh, data_dir, "refresh", memory),
                timer.run("unchanged full", wh, data_dir, "full", memory)]
        rewrite_changed(base, target, rows, seed=999)
        runs.append(timer.run("1%-changed", wh, data_dir, "refresh", memory))
    finally:
        wh.dispose()
        db.drop_schema(schema)
    return runs


def phase_report(runs: list[Phases]) -> str:
    names = list(dict.fromkeys(name for run in runs for name in run.spent))
    head = f"{'phase (wall seconds)':<74}" + "".join(f"{r.label:>16}" for r in runs)
    lines = [head, "-" * len(head)]
    for name in names:
        lines.append(f"{name:<74}" + "".join(f"{r.spent.get(name, 0.0):16.2f}" for r in runs))
    lines.append(f"{'total (run_sequence)':<74}" + "".join(f"{r.total:16.2f}" for r in runs))
    for run in runs:
        lines += ["", f"SQL statements of {SLOW_SQL * 1000:.0f} ms or more in the {run.label} run:"]
        for seconds, statement in run.statements:
            text = statement if len(statement) <= 150 else statement[:147] + "..."
            lines.append(f"  {seconds:7.2f} s  {text}")
    return "\n".join(lines)


def profile_first_load(db: Database, data_dir: Path, memory: Memory) -> tuple[float, str]:
    """One first load under cProfile; returns its wall time and the report text."""
    schema = db.new_schema("profile")
    wh = Warehouse(db.schema_url(schema))
    profiler = cProfile.Profile()
    try:
        db.checkpoint()
        profiler.enable()
        total, _ = timed_run(wh, data_dir, "refresh", memory)
        profiler.disable()
    finally:
        wh.dispose()
        db.drop_schema(schema)
    stats = pstats.Stats(profiler)
    lines = ["Per-phase (cProfile cumulative seconds; inflated by the profiler's per-call cost)",
             ""]
    phases = [
        ("run_sequence (whole run)", "execute.py", "run_sequence"),
        ("CsvSnapshot._load_file", "csv_extract.py", "_load_file"),
        ("_FileLoad.load", "csv_extract.py", "load"),
        ("  stored hashes (one binary value)", "csv_extract.py", "_stored_hashes"),
        ("  _each_row (hash, match, emit; self time is the loop)", "csv_extract.py",
         "_each_row"),
        ("  iter_raw (read blocks; lines the scanner leaves)", "csvfile.py", "iter_raw"),
        ("  take_plain (compiled scanner, plain records)", "csv_extract.py", "take_plain"),
        ("  RowPattern.fields (one regex per plain record)", "csv_copy.py", "fields"),
        ("  _parse (field parsers, other records)", "csv_extract.py", "_parse"),
        ("  emit (COPY text lines)", "csv_extract.py", "emit"),
        ("  Copy.write (psycopg COPY)", "copy.py", "write"),
        ("  upsert (merge SQL)", "merge.py", "upsert"),
        ("ensure_table", "tracking.py", "ensure_table"),
        ("_file_digest", "csv_extract.py", "_file_digest"),
    ]
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    for label, suffix, func in phases:
        hits = [(v[1], v[3]) for (file, _, name), v in raw.items()
                if name == func and file.endswith(suffix)]
        if hits:
            calls = sum(h[0] for h in hits)
            cumulative = sum(h[1] for h in hits)
            lines.append(f"{label:<42} {cumulative:9.2f} s  {calls:>10} calls")
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("cumulative").print_stats(15)
    lines += ["", "Top 15 functions by cumulative time", buffer.getvalue()]
    buffer.seek(0)
    buffer.truncate()
    stats.sort_stats("tottime").print_stats(15)
    lines += ["Top 15 functions by own time (tottime)", buffer.getvalue()]
    return total, "\n".join(lines)


# --------------------------------------------------------------------------- report


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value >= 0.995 else f"{value * 100:.1f}%"


def table(steps: dict[str, Step]) -> str:
    raw = statistics.median(steps["raw"].seconds)
    first = statistics.median(steps["first"].seconds)
    out = ["| step | median s | min s | max s | vs raw COPY | vs first load | target | "
           "result | peak RSS MiB (+ over step start) |",
           "|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for step in steps.values():
        median = statistics.median(step.seconds)
        verdict = ("pass" if step.check(median, raw, first) else "FAIL") if step.check else "-"
        peak = "-"
        if step.peaks_kb:
            high, low = max(step.peaks_kb)
            peak = f"{high / 1024:.0f} (+{max(0, high - low) / 1024:.0f})"
        out.append(
            f"| {step.label} | {median:.3f} | {min(step.seconds):.3f} | "
            f"{max(step.seconds):.3f} | {fmt_ratio(median / raw)} | "
            f"{fmt_ratio(median / first)} | {step.target or '-'} | {verdict} | {peak} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (SQLAlchemy form)")
    parser.add_argument("--no-profile", action="store_true", help="skip the profiled load")
    args = parser.parse_args(argv)
    if sa.make_url(args.url).get_backend_name() != "postgresql":
        parser.error("--url must be a PostgreSQL URL")

    steps = {
        "raw": Step("raw COPY (plain table)"),
        "raw_pk": Step("raw COPY (table with PRIMARY KEY id), info"),
        "first": Step("first load", "≤ 3x raw COPY", lambda m, r, f: m <= 3 * r),
        "refresh": Step("unchanged reload (refresh)", "≤ 5% of first",
                        lambda m, r, f: m <= 0.05 * f),
        "full": Step("unchanged reload (mode=full), info", "≤ 5% of first",
                     lambda m, r, f: m <= 0.05 * f),
        "changed": Step("1%-changed reload (refresh)", "≤ 40% of first",
                        lambda m, r, f: m <= 0.40 * f),
    }
    memory = Memory()
    db = Database(args.url)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="csv_load_") as tmp:
        base = Path(tmp) / "base.csv"
        data_dir = Path(tmp) / "data"
        data_dir.mkdir()
        started = time.perf_counter()
        generate(base, args.rows)
        size = base.stat().st_size
        print(f"generated {args.rows:,} rows x {len(HEADER)} columns, {size / 2**20:.1f} MiB, "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        try:
            raw_schema = db.new_schema("raw")
            for rep in range(args.repeat):
                started = time.perf_counter()
                repetition(db, rep, args.rows, base, data_dir, steps, memory, raw_schema)
                done = ", ".join(f"{k} {s.seconds[-1]:.2f}s" for k, s in steps.items())
                print(f"repetition {rep + 1}/{args.repeat} ({time.perf_counter() - started:.0f}"
                      f" s): {done}", flush=True)
            report = ""
            if not args.no_profile:
                runs = phase_timings(db, base, data_dir, args.rows, memory)
                shutil.copyfile(base, data_dir / FILE_NAME)
                profiled, text = profile_first_load(db, data_dir, memory)
                report = "\n".join([
                    f"CSV load profile: {args.rows:,} rows, {size / 2**20:.1f} MiB, "
                    f"PostgreSQL {sa.make_url(args.url).render_as_string()}",
                    "",
                    "Phase wall times, one unprofiled run each (light timers only)",
                    "", phase_report(runs), "",
                    f"cProfile of another first load ({profiled:.2f} s under the profiler)",
                    "", text])
                PROFILE_FILE.write_text(report + "\n", encoding="utf-8")
        finally:
            db.drop_all()

    memory.reset()
    print()
    print(f"## CSV load on PostgreSQL: {args.rows:,} rows x {len(HEADER)} columns "
          f"({size / 2**20:.1f} MiB), {args.repeat} repetition(s)")
    print()
    print(table(steps))
    print()
    print(f"Peak RSS of the process: {memory.process_peak_kb / 1024:.0f} MiB "
          "(resource.getrusage ru_maxrss; per-step peaks reset via /proc/self/clear_refs)")
    if report:
        print(f"Profile of the first load: {PROFILE_FILE}")
        print()
        print(report.split("cProfile of another")[0].rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
