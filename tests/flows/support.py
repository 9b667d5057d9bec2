"""Helpers of the flow tests: temporary flows directories and the ``loader`` command.

Flow modules written here ``import _toys`` (a copy of ``toys.py``). The
``loader`` subprocesses get an environment with no ``LOADER_*`` variable of
the developer's shell except those a test sets, so they do what the test says.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from loader.warehouse import create_engine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
REPO_FLOWS = REPO / "flows"
LOADER = str(Path(sys.executable).with_name("loader"))


def write_flows(directory: Path, modules: Mapping[str, str]) -> Path:
    """A flows directory holding ``_toys.py`` and the given modules (name -> source)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "toys.py", directory / "_toys.py")
    for name, source in modules.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    return directory


def env(**settings: str | Path | None) -> dict[str, str]:
    """This process's environment without LOADER_* variables, plus ``settings``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOADER_")}
    base.update({k: str(v) for k, v in settings.items() if v is not None})
    base.setdefault("PYTHONUNBUFFERED", "1")
    return base


def loader(*args: str, environ: Mapping[str, str], timeout: float = 90,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``loader`` command; its output is returned, never raised on."""
    return subprocess.run([LOADER, *args], env=dict(environ), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON a ``loader run --json`` printed (its last line)."""
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"no output: rc={done.returncode} stderr={done.stderr[-2000:]}"
    return dict(json.loads(lines[-1]))


def rows(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of a query against the warehouse at ``url``."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()
