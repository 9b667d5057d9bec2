"""One loader phase of ``python -m benchmarks``, in a process of its own.

``python -m benchmarks.sales_phase --url URL --flow sales.nightly --data-dir DIR`` runs the
flow in-process (the embedded worker, as ``loader run`` does without a broker) and prints one
JSON line: the runner's seconds, the run id and status, every task run from the history, and
the peak RSS of this process. The parent runs each phase in a new process so that the peak
RSS is the phase's own. Migrations run before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any


def vm_hwm_kb() -> int:
    """The peak resident set of this process (VmHWM), in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the warehouse URL")
    parser.add_argument("--flow", required=True, help="sales.nightly or sales.refresh")
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    if os.environ.get("LOADER_BROKER_URL"):
        parser.error("run without LOADER_BROKER_URL: this driver runs flows in-process")

    from loader import history
    from loader.flow import load
    from loader.runner import run_flow
    from loader.warehouse import Warehouse

    wh = Warehouse(args.url)
    flow = load(args.flow)
    started = time.perf_counter()
    report = run_flow(wh, flow, params={"data_dir": str(args.data_dir)})
    wall = time.perf_counter() - started
    with wh.begin() as conn:
        tasks: list[dict[str, Any]] = [
            {k: t[k] for k in ("task", "worker", "status", "started_at", "ended_at", "seconds",
                               "rows_read", "inserted", "updated", "deleted", "rejected",
                               "error")}
            for t in history.task_runs(conn, report.run_id)]
    wh.dispose()
    out = {"seconds": report.seconds, "wall": wall, "run_id": report.run_id,
           "status": report.status, "error": report.error, "tasks": tasks,
           "stages": [[p.name for p in stage] for stage in flow.stages],
           "vm_hwm_kb": vm_hwm_kb()}
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    sys.stdout.flush()
    # The embedded worker is a daemon thread pool; leave without waiting for it.
    os._exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
