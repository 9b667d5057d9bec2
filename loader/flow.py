"""Flows: ordinary Celery canvases of processor tasks, checked before they run.

A flow module (a ``.py`` file in the flows directory, ``./flows`` or
``LOADER_FLOWS``) builds canvases with ``step(processor)``, Celery's
``group``/``chain``/``chord``, and wraps one in a :class:`Flow` with its mode
and parameters. A flow is named ``module.attribute`` (``sales.nightly``).

The framework reads a canvas as *stages*: a chain's elements run one after
another; the members of a group (or a chord's header) run side by side and
do not see each other's output. Checking a flow means every task's reads are
provided by an earlier stage or declared as sources.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Task, chain, group
from celery.canvas import Signature, _chain, chord

from loader.errors import FlowError
from loader.processors.base import Mode, Processor

_processors: dict[str, Processor] = {}


def step(processor: Processor, **options: Any) -> Signature:
    """The immutable signature of ``processor``'s task, for use in a canvas."""
    task = register(processor)
    return task.si().set(**options)


def register(processor: Processor) -> Task:
    """Make ``processor`` a Celery task named after it (idempotent)."""
    from loader.celery_app import TASK_OPTIONS, app

    known = _processors.get(processor.name)
    if known is not None and known is not processor and known != processor:
        raise FlowError(f"two different processors are named {processor.name!r}: "
                        "processor names must be unique (they key the watermarks)")
    _processors[processor.name] = processor
    if processor.name in app.tasks:
        return app.tasks[processor.name]

    def body(self: Task, run: dict[str, Any]) -> dict[str, Any]:
        from loader.tasks import execute

        def report(meta: dict[str, Any]) -> None:
            self.update_state(state="PROGRESS", meta=meta)

        return execute(_processors[self.name], run, celery_id=self.request.id,
                       worker=self.request.hostname, report=report)

    body.__name__ = body.__qualname__ = processor.name.replace(".", "_")
    body.__doc__ = f"Run processor {processor.name!r}."
    return app.task(name=processor.name, bind=True, **TASK_OPTIONS)(body)


def processor(name: str) -> Processor:
    try:
        return _processors[name]
    except KeyError:
        raise FlowError(f"no processor named {name!r} is registered") from None


@dataclass
class Flow:
    """A canvas with what it needs to run: its mode, parameters and source tables.

    ``sources`` are ``table.column`` names the flow reads from tables that
    another flow loads into the warehouse.
    """

    canvas: Signature
    mode: Mode = "refresh"
    params: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    description: str = ""
    name: str = field(default="", compare=False)

    @property
    def stages(self) -> list[list[Processor]]:
        return stages(self.canvas)

    @property
    def processors(self) -> list[Processor]:
        return [p for stage in self.stages for p in stage]


def _members(canvas: Any) -> list[Any]:
    return list(canvas.tasks)


def stages(canvas: Signature) -> list[list[Processor]]:
    """The canvas as a list of stages, each a list of processors run side by side."""
    if isinstance(canvas, _chain):
        return [stage for part in _members(canvas) for stage in stages(part)]
    if isinstance(canvas, chord):
        return stages(canvas.tasks if isinstance(canvas.tasks, group)
                      else group(canvas.tasks)) + stages(canvas.body)
    if isinstance(canvas, group):
        members = _members(canvas)
        if not members:
            raise FlowError("a flow has an empty group: every group needs at least one task")
        stage = []
        for member in members:
            inner = stages(member)
            if len(inner) != 1 or len(inner[0]) != 1:
                raise FlowError("a group may hold only single tasks: keep flows to a chain "
                                "of groups and chords")
            stage.append(inner[0][0])
        return [stage]
    if isinstance(canvas, Signature):
        return [[processor(canvas.task)]]
    raise FlowError(f"not a canvas: {canvas!r}")


def build(flow_stages: Sequence[Sequence[Processor]], *, run: dict[str, Any],
          link_error: Signature | None = None,
          task_ids: Mapping[str, str] | None = None) -> Signature:
    """A canvas for ``flow_stages`` whose tasks carry ``run``: a chain of groups.

    ``task_ids`` fixes each task's id in advance, so that a watcher knows
    them before the canvas is sent (Celery turns a group followed by a task
    into a chord, which hides the body from a walk over ``tasks``).
    """
    parts: list[Signature] = []
    for stage in flow_stages:
        sigs = []
        for proc in stage:
            sig = register(proc).si(run=run)
            if task_ids is not None:
                sig.set(task_id=task_ids[proc.name])
            if link_error is not None:
                sig.link_error(link_error)
            sigs.append(sig)
        parts.append(group(sigs) if len(sigs) > 1 else sigs[0])
    if not parts:
        raise FlowError("the flow selects no task")
    return chain(*parts) if len(parts) > 1 else parts[0]


def problems(flow: Flow) -> list[str]:
    """Every read that no earlier stage provides, as a message naming task and column."""
    flow_stages = flow.stages
    found = []
    provided: set[str] = set(flow.sources)
    for stage in flow_stages:
        alongside = {p: proc.name for proc in stage for p in proc.provides}
        for proc in stage:
            for read in proc.reads:
                if read in provided or _wildcard(read, provided):
                    continue
                where = alongside.get(read)
                if where and where != proc.name:
                    found.append(f"task {proc.name!r} reads {read}, which {where!r} provides "
                                 "in the same group: move it to a later stage")
                elif where == proc.name:
                    continue
                else:
                    found.append(f"task {proc.name!r} reads {read}, which no earlier task "
                                 "provides and the flow does not declare as a source")
        provided |= {p for proc in stage for p in proc.provides}
    names = [proc.name for stage in flow_stages for proc in stage]
    duplicates = {n for n in names if names.count(n) > 1}
    found += [f"task {n!r} appears more than once in the flow" for n in sorted(duplicates)]
    return found


def _wildcard(read: str, provided: Iterable[str]) -> bool:
    table = read.split(".", 1)[0]
    return f"{table}.*" in provided


def check(flow: Flow) -> None:
    """Raise FlowError listing every read that is not provided upstream."""
    found = problems(flow)
    if found:
        raise FlowError("; ".join(found))


def select(flow: Flow, only: Sequence[str]) -> list[list[Processor]]:
    """The stages restricted to ``only`` and every task they need upstream."""
    flow_stages = flow.stages
    names = {p.name for stage in flow_stages for p in stage}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise FlowError(f"--only names unknown task(s) {', '.join(unknown)}; the flow has: "
                        f"{', '.join(sorted(names))}")
    wanted = set(only)
    for index in range(len(flow_stages) - 1, -1, -1):
        for proc in flow_stages[index]:
            if proc.name not in wanted:
                continue
            needs = set(proc.reads) | {f"{r.split('.', 1)[0]}.*" for r in proc.reads}
            for earlier in flow_stages[:index]:
                for other in earlier:
                    if needs & set(other.provides):
                        wanted.add(other.name)
    selected = [[p for p in stage if p.name in wanted] for stage in flow_stages]
    return [stage for stage in selected if stage]


def flows_path() -> list[Path]:
    """Where flow modules live: ``LOADER_FLOWS`` (os.pathsep list), else ``./flows``
    and the ``flows`` folder of the loader's own repository."""
    configured = os.environ.get("LOADER_FLOWS")
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    candidates = [Path.cwd() / "flows", Path(__file__).resolve().parent.parent / "flows"]
    unique: list[Path] = []
    for path in candidates:
        if path.is_dir() and path.resolve() not in [u.resolve() for u in unique]:
            unique.append(path)
    return unique


def _on_path() -> None:
    for path in flows_path():
        text = str(path.resolve())
        if text not in sys.path:
            sys.path.insert(0, text)


def import_flows() -> None:
    """Import every flow module, so that all their tasks are registered."""
    _on_path()
    for path in flows_path():
        for module in sorted(path.glob("*.py")):
            if not module.name.startswith("_"):
                importlib.import_module(module.stem)


def load(name: str) -> Flow:
    """The flow called ``module.attribute``."""
    module_name, _, attribute = name.rpartition(".")
    if not module_name or not attribute:
        raise FlowError(f"flow name {name!r} must be module.attribute, e.g. sales.nightly")
    _on_path()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        where = ", ".join(str(p) for p in flows_path()) or "(no flows directory)"
        raise FlowError(f"no flow module {module_name!r} in {where}: {exc}") from None
    value = getattr(module, attribute, None)
    if value is None:
        raise FlowError(f"flow module {module_name!r} has no flow {attribute!r}")
    flow = value if isinstance(value, Flow) else Flow(value) if isinstance(
        value, Signature) else None
    if flow is None:
        raise FlowError(f"{name} is not a flow (a loader.Flow or a Celery canvas)")
    flow.name = name
    return flow
