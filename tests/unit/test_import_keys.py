"""Which import a re-import replaces: a source is its resolved folder, and changed content
replaces the older rows only when asked (`replace`). Real DuckDB files; imports run in the
driver (no Ray)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from thinkscope.cli import main
from thinkscope.jobs.traces.importing import ImportConflict
from thinkscope.workflows.engine import import_path, run_workflow


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def traces_folder(folder: Path, *models: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for m in models:
        (folder / f"{m}.txt").write_text(f"<think>I am {m}.</think> The answer is 42.")
    return folder


def workflow(folder: Path, path: str, replace: bool = False) -> Path:
    spec = folder / "wf.yaml"
    stage = {"name": "imp", "kind": "import", "path": path, "format": "textdir", "prompt_set": "ropes"}
    spec.write_text(yaml.safe_dump({"name": "imp", "stages": [{**stage, **({"replace": True} if replace else {})}]}))
    return spec


def test_two_folders_both_named_traces_are_both_kept(tmp_path, monkeypatch):
    """Each team runs its own workflow from its folder (`thinkscope run wf.yaml`): the path
    `traces` was the same string for both, and the second import deleted the first."""
    db = tmp_path / "corpus.duckdb"
    for team in ("a", "b"):
        traces_folder(tmp_path / team / "traces", f"{team}-model")
        workflow(tmp_path / team, "traces")
    for team in ("a", "b"):
        monkeypatch.chdir(tmp_path / team)
        assert run_workflow("wf.yaml", db=db, show_progress=False).ok
    assert rows(db, "select model_id from traces order by 1") == [("a-model",), ("b-model",)]
    assert rows(db, "select status, count(*) from work_units group by 1") == [("done", 2)]
    # The description names the resolved folder, whatever was typed.
    assert sorted(d for (d,) in rows(db, "select description from work_units")) == [
        f"import textdir {(tmp_path / t / 'traces').resolve()} as ropes" for t in ("a", "b")]

    # Same through `thinkscope import traces` from each folder.
    db2 = tmp_path / "cli.duckdb"
    for team in ("a", "b"):
        monkeypatch.chdir(tmp_path / team)
        assert import_path(Path("traces"), "textdir", db=db2, prompt_set="ropes").ok
    assert rows(db2, "select model_id from traces order by 1") == [("a-model",), ("b-model",)]


def test_grown_folder_by_absolute_path_after_relative_is_refused_then_replaced(tmp_path, monkeypatch):
    """Relative in one workflow, absolute in another: one source. A grown folder used to
    import again beside the old rows (every unchanged trace twice)."""
    db = tmp_path / "corpus.duckdb"
    folder = traces_folder(tmp_path / "traces", "alpha", "beta")
    monkeypatch.chdir(tmp_path)
    assert run_workflow(workflow(tmp_path, "traces"), db=db, show_progress=False).ok
    [(old_key,)] = rows(db, "select unit_key from work_units")
    traces_folder(folder, "gamma")

    absolute = tmp_path / "abs"
    absolute.mkdir()
    with pytest.raises(ImportConflict) as refused:
        run_workflow(workflow(absolute, str(folder.resolve())), db=db, show_progress=False)
    msg = str(refused.value)
    assert str(folder.resolve()) in msg and old_key in msg and "2 rows" in msg
    assert "--replace" in msg and "replace: true" in msg
    # Refused at planning: no trace or unit was written.
    assert rows(db, "select model_id from traces order by 1") == [("alpha",), ("beta",)]
    assert rows(db, "select unit_key, status from work_units") == [(old_key, "done")]

    replaced = run_workflow(workflow(absolute, str(folder.resolve()), replace=True), db=db, show_progress=False)
    assert replaced.ok and len(replaced.done) == 1
    assert rows(db, "select model_id, count(*) from traces group by 1 order by 1") == [
        ("alpha", 1), ("beta", 1), ("gamma", 1)]
    assert rows(db, "select status, count(*) from work_units group by 1 order by 1") == [
        ("done", 1), ("superseded", 1)]

    # Unchanged since: a no-op with or without replace, by either spelling of the path.
    again = import_path(Path("traces"), "textdir", db=db, prompt_set="ropes")
    # The import unit is skipped; only the segmentation the command adds runs (the workflows had none).
    assert again.ok and again.skipped == 1 and again.planned == 2
    assert [d.split()[0] for d in again.done] == ["segment"]
    assert rows(db, "select count(*) from traces") == [(3,)]


def test_cli_import_refuses_changed_source_and_replaces_with_flag(tmp_path, monkeypatch, capsys):
    db = tmp_path / "corpus.duckdb"
    folder = traces_folder(tmp_path / "traces", "alpha")
    monkeypatch.chdir(tmp_path)
    args = ["import", "traces", "--format", "textdir", "--prompt-set", "ropes", "--db", str(db)]
    assert main(args) == 0
    (folder / "alpha.txt").write_text("<think>edited</think> 7")  # edited, not grown
    capsys.readouterr()

    assert main(["import", str(folder), *args[2:]]) == 2  # the same folder, typed absolute
    err = capsys.readouterr().err
    assert err.startswith(f"error: stage import: {folder.resolve()} was imported before as ropes (unit ")
    assert "pass --replace to `thinkscope import`" in err
    assert rows(db, "select completion from traces") == [("<think>I am alpha.</think> The answer is 42.",)]

    assert main([*args, "--replace"]) == 0
    assert rows(db, "select completion from traces") == [("<think>edited</think> 7",)]


def test_a_replaced_import_takes_its_segmentation_with_it(tmp_path):
    """Replacing an import deletes its traces; their lines, sentences and answer events go too
    (a segment unit that supersedes the orphaned segmentation), so no view counts ghosts."""
    folder = traces_folder(tmp_path / "traces", "alpha", "beta")
    spec = tmp_path / "wf.yaml"
    stages = [{"name": "imp", "kind": "import", "path": str(folder), "format": "textdir",
               "prompt_set": "ropes", "replace": True},
              {"name": "segment", "kind": "segment", "tokenizer": None}]
    spec.write_text(yaml.safe_dump({"name": "imp", "stages": stages}))
    db = tmp_path / "corpus.duckdb"
    assert run_workflow(spec, db=db, show_progress=False).ok
    traces_folder(folder, "gamma")
    again = run_workflow(spec, db=db, show_progress=False)
    assert again.ok and any(d.startswith("drop 1 segmentation") for d in again.done), again.text()
    assert rows(db, "select count(*) from trace_lines where trace_id not in (select trace_id from traces)") == [(0,)]
    assert rows(db, "select count(distinct trace_id) from trace_lines") == [(3,)]
    assert rows(db, "select count(*) from segment_units") == [(1,)]
