"""Peak memory of the loader at several scales: does it stay flat as the rows grow?

``python -m benchmarks.memory_scale --rows 200000,1000000,2000000,4000000`` generates the
sales workload at each scale, sized as ``python -m benchmarks --rows N`` sizes it, and on
each dialect runs, once and in order: the nightly from an empty warehouse, a no-op
refresh, a refresh after 1% of the sales rows were edited, and the nightly over the then
correct warehouse. Each run is a process of its own, whose peak RSS comes from ``wait4``.

A loader whose memory is flat in the rows shows about the same peak at every scale. The
report (``<out>/memory-<dialects>.md``) gives each phase's peak and seconds at each
scale, its growth in MiB per million rows from the smallest scale to the largest, and
the largest scale's peak over the smallest's.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from benchmarks import sales_report
from benchmarks.sales_bench import (
    DEFAULT_PG,
    DIALECT_LABEL,
    DIALECTS,
    NIGHTLY,
    REFRESH,
    RESULTS,
    PhaseFailed,
    child_env,
    code_state,
    log,
    run_child,
    scale_for,
    schema_url,
)
from loader.salesdata import edit_sales, generate

PHASES = (("nightly_empty", "nightly, empty warehouse"),
          ("noop", "refresh, nothing changed"),
          ("edit_1%", "refresh after 1% of sales rows edited"),
          ("nightly_correct", "nightly, warehouse already correct"))


@dataclass(frozen=True)
class Peak:
    dialect: str
    rows: int
    phase: str
    seconds: float
    rss_kb: int


def growth_per_million(peaks: Sequence[Peak]) -> float | None:
    """MiB of peak RSS gained per million rows, from the smallest scale to the largest."""
    ordered = sorted(peaks, key=lambda p: p.rows)
    if len(ordered) < 2 or ordered[-1].rows == ordered[0].rows:
        return None
    gained = (ordered[-1].rss_kb - ordered[0].rss_kb) / 1024
    return gained / ((ordered[-1].rows - ordered[0].rows) / 1_000_000)


def peak_ratio(peaks: Sequence[Peak]) -> float | None:
    """The peak at the largest scale over the peak at the smallest."""
    ordered = sorted(peaks, key=lambda p: p.rows)
    if len(ordered) < 2 or ordered[-1].rows == ordered[0].rows or not ordered[0].rss_kb:
        return None
    return ordered[-1].rss_kb / ordered[0].rss_kb


def run_scale(dialect: str, rows: int, pristine: Path, work: Path, pg_url: str,
              timeout: float) -> list[Peak]:
    """Every phase once at one scale, on a fresh warehouse and a fresh copy of the data."""
    where = work / f"{dialect}-{rows}"
    data = where / "data"
    shutil.copytree(pristine, data)
    engine = schema = None
    if dialect == "postgresql":
        engine = sa.create_engine(pg_url)
        schema = f"mbench_{uuid.uuid4().hex[:8]}"
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        url = schema_url(pg_url, schema)
    else:
        url = f"sqlite:///{where / 'warehouse.db'}"
    peaks = []
    try:
        for phase, _ in PHASES:
            if phase == "edit_1%":
                edit_sales(data, 0.01, 1)
            flow = NIGHTLY if phase.startswith("nightly") else REFRESH
            result, rss = run_child(
                [sys.executable, "-m", "benchmarks.sales_phase", "--url", url, "--flow", flow,
                 "--data-dir", str(data)],
                env=child_env(), timeout=timeout, what=f"{dialect} {rows:,} {phase}")
            peaks.append(Peak(dialect, rows, phase, float(result["seconds"]), rss))
            log(f"  {DIALECT_LABEL[dialect]} {rows:,} {phase}: {peaks[-1].seconds:.2f} s, "
                f"{rss / 1024:.0f} MiB")
    finally:
        if engine is not None:
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            engine.dispose()
        shutil.rmtree(where, ignore_errors=True)
    return peaks


def report(peaks: Sequence[Peak], scales: Sequence[int], dialects: Sequence[str],
           command: str, versions: dict[str, str]) -> str:
    at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = " | ".join(f"{n:,} rows" for n in scales)
    lines = [f"# Peak memory against rows: {', '.join(f'{n:,}' for n in scales)}", "",
             f"Command: `{command}`", "", f"Run at {at}; one run per phase and scale.", "",
             "## Machine", "", *sales_report.machine(), "", "## Versions", "",
             *sales_report.version_lines(versions), ""]
    for dialect in dialects:
        lines += [f"## {DIALECT_LABEL[dialect]}: peak RSS MiB (seconds)", "",
                  f"| phase | {head} | MiB more per million rows | peak, largest ÷ smallest |",
                  "|---|" + "---:|" * (len(scales) + 2)]
        for phase, label in PHASES:
            found = {p.rows: p for p in peaks if p.dialect == dialect and p.phase == phase}
            cells = [f"{found[n].rss_kb / 1024:.0f} ({found[n].seconds:.2f} s)" if n in found
                     else "—" for n in scales]
            growth = growth_per_million(list(found.values()))
            ratio = peak_ratio(list(found.values()))
            lines.append(f"| {label} | {' | '.join(cells)} | "
                         f"{'—' if growth is None else f'{growth:.1f}'} | "
                         f"{'—' if ratio is None else f'{ratio:.2f}'} |")
        if len(scales) > 1:
            lines += ["", f"From {scales[0]:,} to {scales[-1]:,} rows is "
                      f"{scales[-1] / scales[0]:g} times the rows."]
        lines.append("")
    lines += ["Each scale is sized as `python -m benchmarks --rows N` sizes it: N sales rows "
              "in 4 region files, N/10 customers, N/100 products, 3 years of days. The peak "
              "is the process that ran the phase (wait4), the seconds the runner's own.", ""]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_scale",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="200000,1000000,2000000",
                        help="comma-separated sales rows, one scale each "
                             "(default 200000,1000000,2000000)")
    parser.add_argument("--dialects", default=",".join(DIALECTS),
                        help="comma-separated: postgresql,sqlite (default both)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the report goes")
    parser.add_argument("--pg-url", default=DEFAULT_PG, help="PostgreSQL server (a fresh "
                        "schema per scale, dropped after it)")
    args = parser.parse_args(argv)
    try:
        args.rows = sorted({int(n) for n in args.rows.split(",") if n.strip()})
    except ValueError:
        parser.error(f"--rows takes comma-separated numbers, not {args.rows!r}")
    if not args.rows or args.rows[0] < 1_000:
        parser.error("--rows: at least one scale, each >= 1000")
    args.dialects = [d.strip() for d in args.dialects.split(",") if d.strip()]
    if not args.dialects or any(d not in DIALECTS for d in args.dialects):
        parser.error(f"--dialects takes postgresql and/or sqlite, not {args.dialects!r}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "benchmarks.memory_scale",
                          *(sys.argv[1:] if argv is None else argv)])
    versions = {"code": code_state()}
    if "postgresql" in args.dialects:
        engine = sa.create_engine(args.pg_url)
        with engine.connect() as conn:
            versions["PostgreSQL"] = str(conn.exec_driver_sql("SHOW server_version").scalar())
        engine.dispose()
    work = Path(tempfile.mkdtemp(prefix="memory_scale_"))
    peaks: list[Peak] = []
    failed = None
    try:
        for rows in args.rows:
            scale = scale_for(argparse.Namespace(quick=False, rows=rows))
            log(f"generating {rows:,} sales rows ...")
            pristine = work / f"pristine-{rows}"
            generate(pristine, scale)
            for dialect in args.dialects:
                peaks += run_scale(dialect, rows, pristine, work, args.pg_url,
                                   900 + rows / 40)
            shutil.rmtree(pristine, ignore_errors=True)
    except PhaseFailed as exc:
        failed = str(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    markdown = report(peaks, args.rows, args.dialects, command, versions)
    if failed:
        markdown += f"\n**A run failed; the phases after it were not run.**\n\n```\n{failed}\n```\n"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"memory-{'-'.join(args.dialects)}.md"
    path.write_text(markdown)
    print(markdown)
    log(f"written: {path}")
    if failed:
        log(failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
