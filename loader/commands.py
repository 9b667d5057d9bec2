"""The loader's commands as plain functions; the CLI is a thin layer over these.

Each takes parameters, not a terminal, and returns data, so tests and other
programs call them as the CLI does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loader import changes as cell_changes
from loader import flow as flows
from loader import history
from loader.errors import ConfigError
from loader.flow import Flow
from loader.migrate import current_revision, head_revision, upgrade
from loader.processors.base import Mode
from loader.runner import RunReport, Watcher, run_flow
from loader.warehouse import Warehouse


def parse_params(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings as a dict; a malformed one is a usage error."""
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"parameter {pair!r} is not KEY=VALUE")
        params[key.strip()] = value
    return params


def parse_only(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def run(flow_name: str, *, warehouse: str | None = None, full: bool = False,
        only: Sequence[str] = (), params: Mapping[str, str] | None = None, wait: float = 0.0,
        watcher: Watcher | None = None) -> RunReport:
    """Run a flow by name; ``full`` forces a full rebuild whatever the flow's mode."""
    flow = flows.load(flow_name)
    wh = Warehouse(warehouse)
    mode: Mode | None = "full" if full else None
    kwargs: dict[str, Any] = {"watcher": watcher} if watcher is not None else {}
    return run_flow(wh, flow, params=params, mode=mode, only=only, wait=wait, **kwargs)


def check(flow_name: str) -> tuple[Flow, list[str]]:
    """The flow and the problems with it (empty when every read is provided upstream)."""
    flow = flows.load(flow_name)
    return flow, flows.problems(flow)


def init(warehouse: str | None = None) -> tuple[str | None, str | None]:
    """Apply the loader's migrations; returns the revision before and after."""
    wh = Warehouse(warehouse, migrate=False)
    before = current_revision(wh.engine)
    upgrade(wh.engine)
    return before, head_revision()


def runs(warehouse: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    wh = Warehouse(warehouse)
    with wh.engine.connect() as conn:
        return history.list_runs(conn, limit)


def show(run_id: int, warehouse: str | None = None) -> tuple[dict[str, Any],
                                                              list[dict[str, Any]]]:
    """A run and its task runs; an unknown id is a usage error."""
    wh = Warehouse(warehouse)
    with wh.engine.connect() as conn:
        found = history.get_run(conn, run_id)
        if found is None:
            raise ConfigError(f"no run {run_id} in {wh.masked_url} (see loader runs)")
        return found, history.task_runs(conn, run_id)


def changes(table: str, since: str, warehouse: str | None = None,
            columns: Sequence[str] = (), limit: int | None = None
            ) -> list[cell_changes.CellChange]:
    wh = Warehouse(warehouse)
    with wh.engine.connect() as conn:
        moment = cell_changes.resolve_since(conn, since)
        return cell_changes.changes(conn, table, moment, list(columns) or None, limit)
