"""Checking flows before they run: ``loader.flow.problems``, ``select`` and ``loader check``.

A flow is read as stages (a chain's elements one after another, a group's or
chord header's members side by side). Every ``table.column`` a task reads must
be provided by an earlier stage or declared as a source; a read provided only
by a task of the same group is reported as such; an empty group is refused.
``select`` (what ``--only`` runs) keeps the named tasks and everything they
need upstream, in the flow's stage order. ``loader check`` exits 0 when the
flow is sound, 1 when it has problems and 2 when there is no such flow.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from celery import chain, chord, group

from loader import Warehouse, meta
from loader.errors import FlowError
from loader.flow import Flow, check, flows_path, load, problems, select, stages, step
from loader.runner import run_flow

from .support import REPO_FLOWS, env, loader, write_flows
from .toys import Empty, Mark, log_rows

# Processor names are global: everything in this module starts with "chk_".
a = Empty("chk_a", provides=("chk_t.a",))
b = Empty("chk_b", reads=("chk_t.a",), provides=("chk_t.b",))
c = Empty("chk_c", provides=("chk_u.c",))
d = Empty("chk_d", reads=("chk_t.b", "chk_u.c"), provides=("chk_v.d",))
e = Empty("chk_e", reads=("chk_t.a",), provides=("chk_w.e",))
f = Empty("chk_f", reads=("chk_v.d",), provides=("chk_x.f",))
g = Empty("chk_g", reads=("chk_u.c",))


def names(flow_stages: list[list[object]]) -> list[list[str]]:
    return [[p.name for p in stage] for stage in flow_stages]  # type: ignore[attr-defined]


# --- problems ------------------------------------------------------------------------


def test_missing_provider_names_the_task_and_the_column() -> None:
    """A read nobody provides is one problem naming the reading task and table.column."""
    lost = Empty("chk_lost", reads=("chk_t.a", "chk_nowhere.col"))
    flow = Flow(chain(step(a), step(lost)))
    found = problems(flow)
    assert len(found) == 1, found
    assert "'chk_lost'" in found[0] and "chk_nowhere.col" in found[0]
    assert "no earlier task provides" in found[0]
    with pytest.raises(FlowError, match=r"chk_lost.*chk_nowhere\.col"):
        check(flow)


def test_declared_source_and_wildcard_satisfy_a_read() -> None:
    """A read declared in ``sources`` (or covered by ``table.*``) is not a problem."""
    lost = Empty("chk_lost", reads=("chk_t.a", "chk_nowhere.col"))
    assert problems(Flow(chain(step(a), step(lost)), sources=("chk_nowhere.col",))) == []
    assert problems(Flow(chain(step(a), step(lost)), sources=("chk_nowhere.*",))) == []


def test_provider_in_the_same_group_is_reported_as_such() -> None:
    """Reading what a side-by-side task provides is reported naming both tasks."""
    flow = Flow(chain(group(step(a), step(b)), step(d), step(c)))
    found = problems(flow)
    same = [p for p in found if "same group" in p]
    assert len(same) == 1, found
    assert "'chk_b'" in same[0] and "chk_t.a" in same[0] and "'chk_a'" in same[0]
    # d reads chk_u.c, which only a later stage provides: a plain missing provider.
    assert any("'chk_d'" in p and "chk_u.c" in p and "no earlier task" in p for p in found)
    assert len(found) == 2
    # The same tasks in order are fine.
    assert problems(Flow(chain(step(a), group(step(b), step(c)), step(d)))) == []


def test_a_task_twice_in_a_flow_is_a_problem() -> None:
    """The same processor twice in one flow is reported (its task id would clash)."""
    found = problems(Flow(chain(step(a), step(b), step(a))))
    assert found == ["task 'chk_a' appears more than once in the flow"]


def test_empty_group_is_refused(tmp_path: Path) -> None:
    """A group with no task is an error: in check, in problems, and before a run starts."""
    for canvas in (group(), chord(group(), step(a)), chain(step(a), chord([], step(b)))):
        with pytest.raises(FlowError, match="empty group"):
            problems(Flow(canvas))
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    with pytest.raises(FlowError, match="empty group"):
        run_flow(wh, Flow(chord(group(), step(a)), name="chk.empty"))
    with wh.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(meta.runs)).scalar() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(meta.locks)).scalar() == 0
    wh.dispose()


def test_empty_group_inside_a_chain_is_dropped_by_celery() -> None:
    """Celery itself drops an empty group from a chain; the loader sees the other stages."""
    flow = Flow(chain(step(a), group(), step(b)))
    assert names(flow.stages) == [["chk_a"], ["chk_b"]]
    assert problems(flow) == []


def test_one_task_group_is_a_stage_and_runs(tmp_path: Path) -> None:
    """A group (or chord header) of one task, which Celery may unroll, is a stage of one
    and the flow runs in order, writing each task's row."""
    first = Mark("chk_one_first", provides=("chk_one.a",))
    middle = Mark("chk_one_middle", reads=("chk_one.a",), provides=("chk_one.b",))
    last = Mark("chk_one_last", reads=("chk_one.b",))
    for canvas in (chain(step(first), group(step(middle)), step(last)),
                   chain(step(first), chord([step(middle)], step(last))),
                   chain(group(step(first)), group(step(middle)), step(last))):
        flow = Flow(canvas, mode="full", name="chk.one")
        assert names(flow.stages) == [["chk_one_first"], ["chk_one_middle"], ["chk_one_last"]]
        assert problems(flow) == []
    flow = Flow(chain(step(first), group(step(middle)), step(last)), mode="full",
                name="chk.one")
    assert names(stages(group(step(first)))) == [["chk_one_first"]]
    wh = Warehouse(f"sqlite:///{tmp_path}/wh.db")
    report = run_flow(wh, flow, poll=0.02)
    assert report.ok, report.error
    with wh.engine.connect() as conn:
        assert log_rows(conn) == sorted((n, report.run_id) for n in
                                        ("chk_one_first", "chk_one_middle", "chk_one_last"))
        done = conn.execute(sa.select(meta.task_runs.c.task, meta.task_runs.c.status)
                            .order_by(meta.task_runs.c.started_at)).all()
    assert [tuple(r) for r in done] == [("chk_one_first", "succeeded"),
                                        ("chk_one_middle", "succeeded"),
                                        ("chk_one_last", "succeeded")]
    wh.dispose()


# --- select (--only) -----------------------------------------------------------------

TOY = Flow(chain(group(step(a), step(c)), group(step(b), step(e)), step(d), step(f), step(g)))


@pytest.mark.parametrize(("only", "expected"), [
    (["chk_a"], [["chk_a"]]),
    (["chk_e"], [["chk_a"], ["chk_e"]]),
    (["chk_f"], [["chk_a", "chk_c"], ["chk_b"], ["chk_d"], ["chk_f"]]),
    (["chk_g"], [["chk_c"], ["chk_g"]]),
    (["chk_g", "chk_e"], [["chk_a", "chk_c"], ["chk_e"], ["chk_g"]]),
    (["chk_e", "chk_b", "chk_g"], [["chk_a", "chk_c"], ["chk_b", "chk_e"], ["chk_g"]]),
])
def test_select_is_the_upstream_closure_in_stage_order(only: list[str],
                                                       expected: list[list[str]]) -> None:
    """select keeps exactly the named tasks and, transitively, their providers, in the
    flow's stage order (and the flow's order within a stage), dropping empty stages."""
    assert names(select(TOY, only)) == expected


def test_select_on_the_sales_flow() -> None:
    """--only on the reference flow: the validation needs all but the quality rules,
    and sales_derived needs every extract."""
    flow = load("sales.nightly")
    everything = names(flow.stages)
    without_quality = [[n for n in s if n != "sales_quality"] for s in everything]
    assert names(select(flow, ["sales_validation"])) == without_quality
    assert names(select(flow, ["sales_derived"])) == [
        ["sales_files", "shop_customers", "shop_products", "shop_fx_rates"],
        ["sales_derived"]]
    assert names(select(flow, ["shop_products"])) == [["shop_products"]]


def test_select_names_unknown_tasks() -> None:
    """--only with a task the flow does not have is an error listing the flow's tasks."""
    with pytest.raises(FlowError, match=r"chk_nope.*chk_a, chk_b, chk_c"):
        select(TOY, ["chk_a", "chk_nope"])


def test_select_keeps_a_wildcard_provider() -> None:
    """A task reading table.col needs the task that provides table.* (as check agrees)."""
    every = Empty("chk_every", provides=("chk_wild.*",))
    reader = Empty("chk_wild_reader", reads=("chk_wild.col",))
    flow = Flow(chain(step(every), step(reader)))
    assert problems(flow) == []
    assert names(select(flow, ["chk_wild_reader"])) == [["chk_every"], ["chk_wild_reader"]]


# --- loading flows and the loader check command ----------------------------------------

CLI_FLOWS = {
    "chkcli": """
        from celery import chain, chord, group

        from loader import Flow, step
        from _toys import Empty

        a = Empty("chkcli_a", provides=("chkcli_t.a",))
        b = Empty("chkcli_b", reads=("chkcli_t.a",))
        lost = Empty("chkcli_lost", reads=("chkcli_t.a", "chkcli_t.nowhere"))

        good = Flow(chain(step(a), step(b)), mode="full", description="a then b")
        bad = Flow(chain(group(step(a), step(b)), step(lost)))
        empty = Flow(chord(group(), step(b)))
        bare = chain(step(a), step(b))
        not_a_flow = 42
    """,
}


def test_load_finds_flows_through_loader_flows(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """LOADER_FLOWS (an os.pathsep list) is where flows are found; a bare canvas is a flow,
    and the flow is named module.attribute."""
    other = tmp_path / "empty_dir"
    other.mkdir()
    where = write_flows(tmp_path / "flows", {"chkload": CLI_FLOWS["chkcli"].replace(
        "chkcli", "chkload")})
    monkeypatch.setenv("LOADER_FLOWS", f"{other}{os.pathsep}{where}")
    assert flows_path() == [other, where]
    good = load("chkload.good")
    assert good.name == "chkload.good" and good.mode == "full"
    assert names(good.stages) == [["chkload_a"], ["chkload_b"]]
    bare = load("chkload.bare")
    assert bare.name == "chkload.bare" and bare.mode == "refresh"
    with pytest.raises(FlowError, match="no flow module 'chkload_missing'"):
        load("chkload_missing.good")
    with pytest.raises(FlowError, match="has no flow 'nothing'"):
        load("chkload.nothing")
    with pytest.raises(FlowError, match="is not a flow"):
        load("chkload.not_a_flow")
    with pytest.raises(FlowError, match=r"must be module\.attribute"):
        load("chkload")


def test_loader_check_exit_codes(tmp_path: Path) -> None:
    """loader check: 0 and "ok" for a sound flow, 1 with one error line per problem,
    2 for an unknown flow or a malformed one (an empty group)."""
    where = write_flows(tmp_path / "flows", CLI_FLOWS)
    environ = env(LOADER_FLOWS=f"{where}{os.pathsep}{REPO_FLOWS}")

    ok = loader("check", "chkcli.good", environ=environ)
    assert ok.returncode == 0, ok.stderr
    assert "chkcli_a" in ok.stdout and "chkcli_b" in ok.stdout and "ok" in ok.stdout
    assert ok.stderr.strip() == ""

    bad = loader("check", "chkcli.bad", environ=environ)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    errors = bad.stderr.strip().splitlines()
    assert len(errors) == 2, bad.stderr
    assert any("'chkcli_b'" in line and "chkcli_t.a" in line and "same group" in line
               for line in errors)
    assert any("'chkcli_lost'" in line and "chkcli_t.nowhere" in line for line in errors)
    assert all(line.startswith("error: ") for line in errors)

    for name, message in (("chkcli.missing", "has no flow 'missing'"),
                          ("nosuchmodule.nightly", "no flow module 'nosuchmodule'"),
                          ("chkcli.empty", "empty group")):
        done = loader("check", name, environ=environ)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    sales = loader("check", "sales.nightly", environ=environ)
    assert sales.returncode == 0, sales.stderr
    assert "sales_validation" in sales.stdout
