"""One error hierarchy for the whole loader.

Every error carries its fields as attributes and a message that names the
object, the bad value and the next step. ``TransientError`` marks failures that
are worth retrying (a lost connection, a held lock); everything else is
terminal, and the Celery tasks retry only transient errors.
"""

from __future__ import annotations


class LoaderError(Exception):
    """Root of every error the loader raises on purpose."""

    transient = False


class TransientError(LoaderError):
    """A failure that may go away on its own: retry with backoff."""

    transient = True


class ConfigError(LoaderError):
    """A bad parameter, URL, flow name or definition: fix the input and rerun."""


class SourceError(LoaderError):
    """A source cannot be read as declared; nothing of it was changed."""

    def __init__(self, source: str, message: str, *, line: int | None = None,
                 column: str | None = None) -> None:
        self.source = source
        self.line = line
        self.column = column
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {message}")


class SchemaError(LoaderError):
    """A table or column definition clashes with what the warehouse holds."""


class ValidationFailed(LoaderError):
    """A validation check at the end of a flow found the warehouse inconsistent."""

    def __init__(self, check: str, detail: str) -> None:
        self.check = check
        self.detail = detail
        super().__init__(f"validation check {check!r} failed: {detail}")


class LockHeld(TransientError):
    """Another run holds the warehouse lock."""

    def __init__(self, holder: str, run_id: int | None, waited: float) -> None:
        self.holder = holder
        self.run_id = run_id
        self.waited = waited
        run = f"run {run_id}" if run_id is not None else "another run"
        super().__init__(
            f"the warehouse is locked by {run} ({holder}); waited {waited:.0f}s. "
            "Wait for it to finish (loader runs), or pass --wait SECONDS."
        )


class FlowError(LoaderError):
    """A flow is malformed or its tasks' reads are not provided upstream."""


class TaskFailed(LoaderError):
    """A task of a run failed; the run is marked failed."""

    def __init__(self, task: str, message: str) -> None:
        self.task = task
        super().__init__(f"task {task!r} failed: {message}")
