"""A run's life: failure, the warehouse lock, stale locks, and secrets in what is shown.

Everything here goes through the ``loader`` command in a subprocess (the
embedded worker: no broker), against SQLite and PostgreSQL warehouses:

- a failing task fails the run: ``loader_runs`` says failed with the error,
  ``loader_task_runs`` records the failed task, its writes are rolled back,
  the lock is released (the next run starts at once) and the CLI exits 1
  with a one-line error;
- a run that finds the lock held waits ``--wait`` seconds and exits 1 naming
  the run that holds it, or starts as soon as the lock is released;
- a lock whose holder stopped renewing it (stopped heartbeat, an expired row,
  a killed ``loader run``) is taken over;
- a password in a URL never appears in ``loader runs``, ``loader show``, the
  run's output or its errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from loader import Warehouse, cli, meta
from loader.history import start_run
from loader.lock import Lease
from loader.salesdata import Scale, generate
from loader.warehouse import db_now

from .support import LOADER, REPO_FLOWS, env, loader, report, rows, write_flows

BOOM = "boom: the toy processor failed on purpose"
FLOWS = {
    "lifeflows": f"""
        from celery import chain

        from loader import Flow, step
        from _toys import Mark

        first = Mark("life_first", provides=("life.a",))
        second = Mark("life_second", reads=("life.a",), provides=("life.b",))
        boom = Mark("life_boom", reads=("life.a",), provides=("life.b",), fail={BOOM!r})
        after = Mark("life_after", reads=("life.b",))
        sleepy = Mark("life_sleepy", nap=120.0)
        napping = Mark("life_napping", nap=4.0, provides=("life.n",))
        after_nap = Mark("life_after_nap", reads=("life.n",))

        ok = Flow(chain(step(first), step(second)), mode="full")
        failing = Flow(chain(step(first), step(boom), step(after)), mode="full")
        slow = Flow(chain(step(sleepy)), mode="full")
        pausable = Flow(chain(step(napping), step(after_nap)), mode="full")
    """,
}
SECRET = "s3cret"
SMALL = Scale(sales=300, customers=30, products=10, days=5)


@pytest.fixture
def flows_env(tmp_path: Path, warehouse_url: str) -> dict[str, str]:
    """The environment of a ``loader`` subprocess: toy flows, the sales flow, the warehouse."""
    where = write_flows(tmp_path / "flows", FLOWS)
    return env(LOADER_FLOWS=f"{where}{os.pathsep}{REPO_FLOWS}",
               LOADER_WAREHOUSE_URL=warehouse_url)


@pytest.fixture
def wh(warehouse_url: str) -> Iterator[Warehouse]:
    """The (migrated) warehouse the subprocesses write to, for the test to look at."""
    warehouse = Warehouse(warehouse_url)
    yield warehouse
    warehouse.dispose()


def runs_table(url: str) -> list[tuple[object, ...]]:
    return rows(url, "SELECT run_id, flow, status, error FROM loader_runs ORDER BY run_id")


def toy_log(url: str) -> list[tuple[object, ...]]:
    return rows(url, "SELECT task, run_id FROM toy_log ORDER BY run_id, task")


def locks(url: str) -> list[tuple[object, ...]]:
    return rows(url, "SELECT holder, run_id FROM loader_locks")


def test_failing_task_fails_the_run_and_releases_the_lock(
        flows_env: dict[str, str], warehouse_url: str) -> None:
    """The run is failed with the task's error, the task run is failed, its writes are
    rolled back, the next run starts at once, and the CLI exits 1 with one error line."""
    done = loader("run", "lifeflows.failing", environ=flows_env)
    assert done.returncode == 1, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("run 1 failed in "), done.stdout
    assert last.endswith(f": task 'life_boom' failed: RuntimeError: {BOOM}"), done.stdout
    assert "Traceback" not in done.stdout + done.stderr

    assert runs_table(warehouse_url) == [
        (1, "lifeflows.failing", "failed", f"task 'life_boom' failed: RuntimeError: {BOOM}")]
    tasks = rows(warehouse_url, "SELECT task, status, error, ended_at IS NOT NULL "
                                "FROM loader_task_runs WHERE run_id = 1 ORDER BY id")
    assert tasks == [("life_first", "succeeded", None, True),
                     ("life_boom", "failed", f"RuntimeError: {BOOM}", True)]
    assert toy_log(warehouse_url) == [("life_first", 1)]  # life_boom's row was rolled back
    assert locks(warehouse_url) == []

    quiet = loader("run", "lifeflows.failing", "--quiet", environ=flows_env)
    assert quiet.returncode == 1
    assert quiet.stdout == ""
    assert quiet.stderr.splitlines() == [
        f"error: task 'life_boom' failed: RuntimeError: {BOOM}"]

    ok = loader("run", "lifeflows.ok", "--json", environ=flows_env)
    assert ok.returncode == 0, ok.stderr
    assert report(ok)["status"] == "succeeded" and report(ok)["run_id"] == 3
    assert [r[2] for r in runs_table(warehouse_url)] == ["failed", "failed", "succeeded"]
    assert toy_log(warehouse_url) == [("life_first", 1), ("life_first", 2),
                                      ("life_first", 3), ("life_second", 3)]
    assert locks(warehouse_url) == []


def test_held_lock_waits_then_fails_naming_the_holder(
        flows_env: dict[str, str], warehouse_url: str, wh: Warehouse) -> None:
    """A second run waits --wait seconds for the lock, then exits 1 naming the run that
    holds it, having recorded nothing; once the holder releases, a waiting run proceeds."""
    with wh.begin() as conn:
        holder_run = start_run(conn, "holder.flow", "full", {})
    lease = Lease(wh)
    lease.acquire()
    try:
        lease.attach(holder_run.run_id)
        started = time.monotonic()
        done = loader("run", "lifeflows.ok", "--wait", "2", environ=flows_env)
        assert done.returncode == 1, done.stdout + done.stderr
        assert time.monotonic() - started >= 2
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"error: the warehouse is locked by run {holder_run.run_id} "
                                   f"({lease.holder}); waited 2s")
        assert [r[:3] for r in runs_table(warehouse_url)] == [
            (holder_run.run_id, "holder.flow", "running")]
        assert locks(warehouse_url) == [(lease.holder, holder_run.run_id)]

        waiting = subprocess.Popen([LOADER, "run", "lifeflows.ok", "--wait", "60", "--json"],
                                   env=flows_env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(3)
            assert waiting.poll() is None, waiting.communicate()
            assert len(runs_table(warehouse_url)) == 1
            lease.release()
            released = time.monotonic()
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, err
        assert time.monotonic() - released < 20
        assert json.loads(out.strip().splitlines()[-1])["status"] == "succeeded"
    finally:
        lease.release()
    second = holder_run.run_id + 1
    assert toy_log(warehouse_url) == [("life_first", second), ("life_second", second)]
    assert locks(warehouse_url) == []


def test_lock_with_a_stopped_heartbeat_is_taken_over(
        flows_env: dict[str, str], warehouse_url: str, wh: Warehouse) -> None:
    """A lease whose holder stopped renewing it expires after its ttl; the next run takes
    it over without waiting, and the stale holder's release does not touch the new one."""
    stale = Lease(wh, ttl=1)
    stale.acquire()
    stale.attach(77)
    stale._stop.set()  # the holder hangs: no more heartbeats
    assert stale._beat is not None
    stale._beat.join()
    time.sleep(1.5)
    done = loader("run", "lifeflows.ok", "--json", environ=flows_env)
    assert done.returncode == 0, done.stderr
    assert report(done)["status"] == "succeeded"
    stale.release()
    assert toy_log(warehouse_url) == [("life_first", 1), ("life_second", 1)]
    assert locks(warehouse_url) == []


def test_expired_lock_row_is_taken_over(flows_env: dict[str, str], warehouse_url: str,
                                        wh: Warehouse) -> None:
    """A loader_locks row whose expires_at is past (its holder died) does not block a run."""
    with wh.begin() as conn:
        now = db_now(conn)
        conn.execute(meta.locks.insert().values(
            name="warehouse", holder="deadhost:1:0000dead", run_id=41,
            acquired_at=now - timedelta(hours=2), heartbeat_at=now - timedelta(hours=1),
            expires_at=now - timedelta(minutes=55)))
    done = loader("run", "lifeflows.ok", "--json", environ=flows_env)
    assert done.returncode == 0, done.stderr
    assert toy_log(warehouse_url) == [("life_first", 1), ("life_second", 1)]
    assert locks(warehouse_url) == []


def kill_a_running_run(environ: dict[str, str], url: str) -> int:
    """Start ``loader run lifeflows.slow`` with a 2 s lock ttl, SIGKILL it mid-task;
    returns its run id. Its lock row stays behind, no longer renewed."""
    slow = subprocess.Popen([LOADER, "run", "lifeflows.slow", "--quiet"],
                            env={**environ, "LOADER_LOCK_TTL": "2"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                running = rows(url, "SELECT run_id FROM loader_task_runs "
                                    "WHERE task = 'life_sleepy' AND status = 'running'")
            except sa.exc.DBAPIError:
                running = []
            if running:
                break
            assert slow.poll() is None, "loader run ended before its slow task started"
            time.sleep(0.1)
        else:
            pytest.fail("the slow task never started")
    finally:
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait()
    dead = int(running[0][0])
    assert [r[1] for r in locks(url)] == [dead]
    return dead


def test_lock_of_a_killed_run_is_taken_over(flows_env: dict[str, str],
                                            warehouse_url: str) -> None:
    """A `loader run` killed with SIGKILL leaves its lock; once its ttl (LOADER_LOCK_TTL)
    passes without heartbeat, a waiting run takes it over and runs."""
    dead = kill_a_running_run(flows_env, warehouse_url)
    started = time.monotonic()
    done = loader("run", "lifeflows.ok", "--wait", "30", "--json",
                  environ={**flows_env, "LOADER_LOCK_TTL": "2"})
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 25
    assert report(done)["run_id"] == dead + 1
    assert toy_log(warehouse_url) == [("life_first", dead + 1), ("life_second", dead + 1)]
    assert locks(warehouse_url) == []


def test_run_whose_lock_was_taken_over_is_not_left_running(tmp_path: Path) -> None:
    """After a killed run's lock was taken over, `loader runs` no longer shows it running."""
    url = f"sqlite:///{tmp_path}/wh.db"
    environ = env(LOADER_FLOWS=str(write_flows(tmp_path / "flows", FLOWS)),
                  LOADER_WAREHOUSE_URL=url)
    Warehouse(url).dispose()
    dead = kill_a_running_run(environ, url)
    done = loader("run", "lifeflows.ok", "--wait", "30", "--json",
                  environ={**environ, "LOADER_LOCK_TTL": "2"})
    assert done.returncode == 0, done.stderr
    listed = json.loads(loader("runs", "--json", environ=environ).stdout)
    status = {r["run_id"]: r["status"] for r in listed}
    assert status[dead + 1] == "succeeded"
    assert status[dead] != "running"


def wait_for_task(url: str, task: str, process: subprocess.Popen[str]) -> int:
    """Wait until ``task`` is running; returns its run id."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(sa.exc.DBAPIError):
            found = rows(url, "SELECT run_id FROM loader_task_runs "
                              "WHERE task = :t AND status = 'running'", t=task)
            if found:
                return int(found[0][0])
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    pytest.fail(f"{task} never started")


def test_run_that_lost_its_lock_does_not_go_on(tmp_path: Path) -> None:
    """A run paused past its lock's ttl, whose lock another run took over, does not run
    its remaining tasks when it resumes: one active run per warehouse."""
    url = f"sqlite:///{tmp_path}/wh.db"
    environ = env(LOADER_FLOWS=str(write_flows(tmp_path / "flows", FLOWS)),
                  LOADER_WAREHOUSE_URL=url, LOADER_LOCK_TTL="1")
    Warehouse(url).dispose()
    paused = subprocess.Popen([LOADER, "run", "lifeflows.pausable", "--json"], env=environ,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        first = wait_for_task(url, "life_napping", paused)
        os.killpg(paused.pid, signal.SIGSTOP)
        time.sleep(1.5)
        other = loader("run", "lifeflows.ok", "--json", "--wait", "10", environ=environ)
        assert other.returncode == 0, other.stderr  # it took the expired lock over
        os.killpg(paused.pid, signal.SIGCONT)
        out, _ = paused.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(paused.pid, signal.SIGCONT)
        if paused.poll() is None:
            os.killpg(paused.pid, signal.SIGKILL)
            paused.wait()
    assert ("life_after_nap", first) not in toy_log(url)
    assert json.loads(out.strip().splitlines()[-1])["status"] == "failed"


# --- secrets -----------------------------------------------------------------------------


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text, text


def shown(url: str, run_id: int) -> list[str]:
    """Everything the history commands print about a run (run in this process)."""
    outputs = []
    for args in (("runs",), ("runs", "--json"), ("show", str(run_id)),
                 ("show", str(run_id), "--json")):
        done = CliRunner().invoke(cli.main, [*args, "--warehouse", url])
        assert done.exit_code == 0, (args, done.output)
        assert f"{run_id}" in done.output
        outputs.append(done.output)
    return outputs


def stored(url: str) -> list[str]:
    texts = [str(r) for r in rows(url, "SELECT params, error FROM loader_runs")]
    texts += [str(r) for r in rows(url, "SELECT error, details FROM loader_task_runs")]
    return texts


def test_source_password_never_shown(tmp_path: Path) -> None:
    """A failing source URL with a password: the run fails, and neither its output, its
    error, loader runs/show nor the stored history contains the password."""
    data = tmp_path / "data"
    generate(data, SMALL)
    url = f"sqlite:///{tmp_path}/wh.db"
    environ = env(LOADER_FLOWS=str(REPO_FLOWS), LOADER_WAREHOUSE_URL=url)
    source = f"source_url=postgresql://u:{SECRET}@127.0.0.1:1/x"
    outputs = []
    for extra in ((), ("--json",), ("--quiet",)):
        done = loader("--traceback", "run", "sales.nightly", "-p", f"data_dir={data}",
                      "-p", source, *extra, environ=environ)
        assert done.returncode == 1, done.stdout + done.stderr
        outputs += [done.stdout, done.stderr]
    assert "failed" in outputs[0] and "shop_" in outputs[0]
    assert_no_secret(*outputs, *shown(url, 1), *stored(url))
    params = json.loads(rows(url, "SELECT params FROM loader_runs WHERE run_id = 1")[0][0])
    assert params["source_url"] == "postgresql://u:***@127.0.0.1:1/x"


UNREACHABLE = f"postgresql://postgres:{SECRET}@127.0.0.1:1/x"
UNREACHABLE_COMMANDS = (("show", "1"), ("--traceback", "runs", "--json"),
                        ("run", "sales.nightly", "-p", "data_dir=."))


def test_warehouse_password_never_shown() -> None:
    """A warehouse URL with a password that cannot be reached: exit 1 with an error, and
    no password, with or without --traceback."""
    environ = env(LOADER_WAREHOUSE_URL=UNREACHABLE)
    for args in UNREACHABLE_COMMANDS:
        done = loader(*args, environ=environ)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert_no_secret(done.stdout, done.stderr)
        assert "error: OperationalError: " in done.stderr, done.stderr
        assert "Connection refused" in done.stderr


def test_error_of_an_unreachable_warehouse_is_one_line() -> None:
    """Without --traceback, an error is exactly one line on stderr."""
    done = loader("runs", environ=env(LOADER_WAREHOUSE_URL=UNREACHABLE))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.postgres
def test_password_in_source_error_is_masked(tmp_path: Path, pg_url: str) -> None:
    """A source that connects (with a password) but lacks the table: the error names the
    source URL with the password masked, on a PostgreSQL warehouse whose URL has it too."""
    data = tmp_path / "data"
    generate(data, SMALL)
    secret_url = sa.make_url(pg_url).set(password=SECRET).render_as_string(hide_password=False)
    assert SECRET in secret_url
    environ = env(LOADER_FLOWS=str(REPO_FLOWS), LOADER_WAREHOUSE_URL=secret_url)
    done = loader("run", "sales.nightly", "-p", f"data_dir={data}", "-p",
                  f"source_url={secret_url}", "--json", environ=environ)
    assert done.returncode == 1, done.stdout + done.stderr
    error = report(done)["error"]
    assert ":***@" in error and "no such table" in error, error
    assert_no_secret(done.stdout, done.stderr, *shown(pg_url, 1), *stored(pg_url))


def test_run_error_is_the_task_error(tmp_path: Path) -> None:
    """The run's error is the failing task's own error text, not Celery's rebuilt repr."""
    data = tmp_path / "data"
    generate(data, SMALL)
    url = f"sqlite:///{tmp_path}/wh.db"
    done = loader("run", "sales.nightly", "-p", f"data_dir={data}", "-p",
                  "source_url=postgresql://u:x@127.0.0.1:1/x", "--quiet",
                  environ=env(LOADER_FLOWS=str(REPO_FLOWS), LOADER_WAREHOUSE_URL=url))
    assert done.returncode == 1
    (error,) = rows(url, "SELECT error FROM loader_runs")[0]
    failed = dict(rows(url, "SELECT task, error FROM loader_task_runs WHERE status = 'failed'"))
    assert failed and all(e.startswith("OperationalError: (psycopg.OperationalError)")
                          for e in failed.values()), failed
    assert "<class " not in error
    assert any(error == f"task {task!r} failed: {text}" for task, text in failed.items()), error
