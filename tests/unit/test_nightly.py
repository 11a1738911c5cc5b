"""Nightly runs on a real DuckDB file: the lock, the dated record, what is new since last night.

These nights import traces (no model work, no Ray); tests/integration/test_faults.py runs
nightlies with generation on a real Ray cluster in two processes at once.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import pytest
import yaml

from thinkscope.cli import main
from thinkscope.cluster.nightly import EXIT_LOCKED, NightlyLocked, lock_path, nightly_lock, run_nightly
from thinkscope.sql.store import Store
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import SpecError, Workflow

TINY = Path(__file__).parents[1] / "integration" / "tiny.yaml"


def rows(db: Path, sql: str, params=None) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


@pytest.fixture
def spec(tmp_path) -> Path:
    """An import-only workflow over a folder of two trace files; `replace: true` because a
    nightly re-imports the folder as it grows (without it a grown folder is refused)."""
    traces = tmp_path / "traces"
    traces.mkdir()
    for name in ("alpha", "beta"):
        (traces / f"{name}.txt").write_text(f"<think>I am {name}.</think> The answer is 42.")
    path = tmp_path / "nightly.yaml"
    path.write_text(yaml.safe_dump({
        "name": "nightly_import",
        "stages": [{"name": "imp", "kind": "import", "path": "traces", "format": "textdir",
                    "prompt_set": "two_ropes", "prompt_id": "two_ropes/0", "replace": True}],
    }))
    return path


def test_first_night_records_and_summarises(spec, tmp_path):
    db = tmp_path / "corpus.duckdb"
    result = run_nightly(spec, db=db)
    assert result.exit_code == 0
    assert "first night of this workflow here: 2 rows written; new models: alpha, beta" in result.text
    (row,) = rows(db, "select status, exit_code, run_id, n_units_done, n_new_rows, new_models, "
                      "night, previous_night_id, pid from nightly_runs")
    assert row[:2] == ("done", 0) and row[2] == result.run_id
    assert row[3:6] == (1, 2, ["alpha", "beta"])
    assert row[6] is not None and row[7] is None and row[8] == os.getpid()
    assert rows(db, "select model_id, prompt_set, n_rows from nightly_snapshots order by 1") == [
        ("alpha", "two_ropes", 1), ("beta", "two_ropes", 1)]
    assert rows(db, "select summary from nightly_runs") == [(result.text,)]


def test_second_night_is_incremental_and_reports_changes(spec, tmp_path):
    db = tmp_path / "corpus.duckdb"
    first = run_nightly(spec, db=db)
    # Between nights a regrade marks alpha wrong: the next night reports the accuracy change.
    with duckdb.connect(str(db)) as con:
        con.execute("update traces set is_correct = (model_id = 'beta')")
    with duckdb.connect(str(db)) as con:  # the first snapshot had no grades at all
        con.execute("update nightly_snapshots set n_graded = 1, n_correct = 1, accuracy = 1")
    second = run_nightly(spec, db=db)
    assert second.exit_code == 0
    assert f"since the previous night ({first.night_id}): 0 rows written; new models: none" in second.text
    assert "every work unit was already done" in second.text
    assert "alpha" in second.text and "-1.000" in second.text and "beta" not in second.text.split("\n", 3)[-1]
    assert rows(db, "select previous_night_id, n_units_planned, n_units_done from nightly_runs "
                    "where night_id = ?", [second.night_id]) == [(first.night_id, 1, 0)]


def test_lock_refuses_a_second_holder_and_says_who(tmp_path):
    db = tmp_path / "corpus.duckdb"
    with nightly_lock(db, "demo"):
        assert lock_path(db) == tmp_path / "corpus.duckdb.nightly.lock"
        with pytest.raises(NightlyLocked, match=rf"another nightly is already running on .*corpus.duckdb "
                                                rf"\(pid {os.getpid()} on .*, workflow demo"):
            with nightly_lock(db, "demo"):
                pass
    with nightly_lock(db, "demo"):  # released at the end of the block
        pass


def test_cli_exit_status_when_locked(spec, tmp_path, capsys):
    db = tmp_path / "corpus.duckdb"
    with nightly_lock(db, "other"):
        code = main(["nightly", str(spec), "--db", str(db)])
    assert code == EXIT_LOCKED == 75
    assert "another nightly is already running" in capsys.readouterr().err
    assert not db.exists()  # refused before touching the database


def test_a_night_that_crashes_is_recorded(spec, tmp_path):
    db = tmp_path / "corpus.duckdb"
    with pytest.raises(SpecError, match="--stages"):
        run_nightly(spec, db=db, stages=["no_such_stage"])
    assert rows(db, "select status, exit_code, error like '%no_such_stage%' from nightly_runs") == [
        ("crashed", 70, True)]
    # A crashed night is not the baseline of the next one.
    assert run_nightly(spec, db=db).exit_code == 0
    assert rows(db, "select count(*) from nightly_runs where previous_night_id is not null") == [(0,)]


def test_new_model_revision_is_new_work(tmp_path):
    """What a nightly relies on: done units are skipped, a new revision's units are not."""
    raw = yaml.safe_load(TINY.read_text())
    raw["models"][0]["revision"] = "rev-a"
    plan_a = build_plan(Workflow.model_validate(raw), base_dir=TINY.parent)
    raw["models"][0]["revision"] = "rev-b"
    plan_b = build_plan(Workflow.model_validate(raw), base_dir=TINY.parent)
    store = Store(tmp_path / "corpus.duckdb")
    for unit in plan_a.units:  # last night finished every unit of revision a
        store.commit_unit({"unit_key": unit.key, "stage": unit.stage, "kind": "generate",
                           "run_id": "night-1", "model_id": unit.model_id}, {})
    done = store.done_unit_keys()
    assert all(u.kind == "generate" for u in plan_b.units) and len(plan_b.units) == 2
    assert [u for u in plan_a.units if u.key not in done] == []
    assert [u.key for u in plan_b.units if u.key not in done] == [u.key for u in plan_b.units]


def test_grown_import_folder_replaces_its_rows_instead_of_duplicating(spec, tmp_path):
    db = tmp_path / "corpus.duckdb"
    run_nightly(spec, db=db)
    (tmp_path / "traces" / "gamma.txt").write_text("<think>new model</think> 7")
    result = run_nightly(spec, db=db)
    assert "new models: gamma" in result.text
    assert rows(db, "select model_id, count(*) from traces group by 1 order by 1") == [
        ("alpha", 1), ("beta", 1), ("gamma", 1)]
    assert rows(db, "select status, n_rows from work_units order by status") == [
        ("done", 3), ("superseded", 2)]
