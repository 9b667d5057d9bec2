"""Real ``loader worker`` processes for the benchmarks that run on Redis."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOADER = str(Path(sys.executable).with_name("loader"))


@contextlib.contextmanager
def workers(environ: Mapping[str, str], count: int, logs: Path,
            start_timeout: float = 180.0) -> Iterator[list[int]]:
    """``count`` ``loader worker --concurrency 1`` processes, ready; their pids.

    Stopped afterwards whatever happens: TERM to each process group, then KILL.
    """
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    tag = uuid.uuid4().hex[:6]
    try:
        for n in range(count):
            log_file = logs / f"worker-{tag}-{n}.log"
            with log_file.open("wb") as out:
                process = subprocess.Popen(
                    [LOADER, "worker", "--concurrency", "1", "-n", f"w{n}-{tag}@%h",
                     "--without-mingle", "--without-gossip"],
                    env=dict(environ), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                    start_new_session=True)
            started.append((process, log_file))
        ready = re.compile(rf"w\d+-{tag}@\S+ ready\.")
        for process, log_file in started:
            deadline = time.monotonic() + start_timeout
            while not ready.search(log_file.read_text(errors="replace")):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("a worker did not start:\n"
                                       + log_file.read_text(errors="replace")[-3000:])
                time.sleep(0.1)
        yield [process.pid for process, _ in started]
    finally:
        for process, _ in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process, _ in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
