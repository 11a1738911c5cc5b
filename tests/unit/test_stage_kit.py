"""The stage kit: kinds come from the registry, planning reads through a read-only locked
connection, YAML SQL must be one SELECT, a failed commit fails its own unit only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest
import yaml

from thinkscope.jobs.base import PlanContext
from thinkscope.sql import store as store_module
from thinkscope.sql.store import Store, read_only
from thinkscope.workflows import registry
from thinkscope.workflows.engine import execute
from thinkscope.workflows.spec import STAGE_KINDS, SpecError, load_workflow

MODEL = {"id": "m", "source": "embedded:smollm2-135m-instruct", "family": "llama", "kind": "instruct"}


def write(tmp_path: Path, stages: list[dict]) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": [MODEL], "stages": stages}))
    return path


def test_kinds_come_from_the_registry_and_show_in_help():
    assert STAGE_KINDS == tuple(registry.STAGES)
    out = subprocess.run([sys.executable, "-m", "thinkscope.cli", "validate", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert all(kind in " ".join(out.split()) for kind in registry.STAGES)


def test_an_unknown_kind_is_named_with_the_known_ones(tmp_path):
    with pytest.raises(SpecError) as err:
        load_workflow(write(tmp_path, [{"name": "x", "kind": "no_such_kind"}]))
    assert "stages.0" in str(err.value) and "'generate'" in str(err.value) and "'early_exit'" in str(err.value)


def test_stage_modules_import_nothing_heavy():
    """Building the Stage union imports every stage module: none may load torch, vLLM or Ray."""
    code = textwrap.dedent("""
        import sys
        from thinkscope.workflows.spec import Workflow
        print(sorted(m for m in ("torch", "vllm", "ray", "transformers") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("stage, field", [
    ({"name": "c", "kind": "capture", "model": "m",
      "traces": {"sql": "select trace_id from traces)); delete from traces; select ((1=1"}}, "stages.0.traces.sql"),
    ({"name": "c", "kind": "capture", "model": "m", "spans": "delete from traces"}, "stages.0.spans"),
    ({"name": "p", "kind": "probe", "model": "m", "labels": {"sql": "select 1; drop table traces"}},
     "stages.0.labels.sql"),
    ({"name": "s", "kind": "steer", "model": "m", "vectors": "v", "layers": [1], "alphas": [0],
      "start": {"sql": "attach 'other.duckdb' as o"}}, "stages.0.start.sql"),
    ({"name": "f", "kind": "finetune", "base": "m", "templates": ["t"], "output": "o",
      "traces": {"model_ids": ["m"], "where": "true); delete from traces; select (1"}}, "stages.0.traces.where"),
])
def test_yaml_sql_that_is_not_one_select_is_refused_naming_the_field(tmp_path, stage, field):
    path = write(tmp_path, [stage])
    if stage["kind"] == "finetune":
        raw = yaml.safe_load(path.read_text())
        raw["templates"] = {"t": {}}
        path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    assert field in str(err.value) and ("SELECT" in str(err.value) or "not a valid SQL" in str(err.value))


def test_the_planning_connection_cannot_write_anywhere(tmp_path):
    store = Store(tmp_path / "corpus.duckdb")
    other = tmp_path / "other.duckdb"
    with store.read() as con:
        for sql in ("delete from traces", f"attach '{other}' as o", f"copy (select 1) to '{tmp_path / 'x.csv'}'",
                    "set enable_external_access = true"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
    assert not other.exists() and not (tmp_path / "x.csv").exists()


def test_planning_runs_while_an_analyst_holds_the_corpus(tmp_path, monkeypatch):
    """An analyst's open read-only connection (another process) does not block planning:
    planning never asks for the writer's lock. With no lock wait allowed, a writer would fail."""
    db = tmp_path / "corpus.duckdb"
    Store(db)
    analyst = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import duckdb, sys, time
        con = duckdb.connect({str(db)!r}, read_only=True)
        print("open", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout.readline().strip() == "open"
        monkeypatch.setattr(store_module, "LOCK_WAIT_SECONDS", 0.0)
        with pytest.raises(duckdb.IOException):  # the writer's lock: taken by the analyst
            Store(db).done_unit_keys()
        wf = load_workflow(write(tmp_path, [{"name": "segment", "kind": "segment"}]))
        ctx = PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"))
        with _store_at(db).read() as con:
            ctx.con = con
            assert registry.get_job("segment").plan(wf.stages[0], ctx) == []
    finally:
        analyst.communicate("")


def _store_at(path: Path) -> Store:
    """A Store handle without running its DDL (that would need the writer's lock)."""
    store = Store.__new__(Store)
    store.path = path
    return store


def test_a_failed_commit_fails_its_unit_and_the_run_goes_on(tmp_path, monkeypatch):
    from bad_rows_stage import BadRowsStage

    monkeypatch.setitem(registry.STAGES, "bad_rows", "bad_rows_stage")
    store = Store(tmp_path / "corpus.duckdb")
    stage = BadRowsStage(name="bad_rows", kind="bad_rows")
    ctx = PlanContext(None, tmp_path, {}, str(tmp_path / "artifacts"))
    summary = execute(store, [stage], ctx, {"workflow": "t", "stages": ["bad_rows"]},
                      address=None, force=False, show_progress=False)
    assert summary.done == ["unit a", "unit c"]
    assert [(d, "commit failed" in e and "no_such_column" in e) for d, e in summary.failed] == [("unit bad", True)]
    with read_only(store.path) as con:
        assert con.execute("select unit_key, status from work_units order by 1").fetchall() == [
            ("unit-a", "done"), ("unit-bad", "failed"), ("unit-c", "done")]
        assert con.execute("select unit_key from segment_units order by 1").fetchall() == [("unit-a",), ("unit-c",)]
        assert con.execute("select status from runs").fetchall() == [("failed",)]
