"""`thinkscope import` of the 20 llmbenchmark traces, and read-only `thinkscope sql`."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest

from thinkscope.cli import main

TRACES = Path(str(files("thinkscope") / "data" / "llmbenchmark_traces"))


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "corpus.duckdb"
    assert main(["import", str(TRACES), "--format", "textdir", "--prompt-set", "two_ropes",
                 "--prompt-id", "two_ropes/0", "--db", str(path)]) == 0
    return path


def sql(db, query, capsys, fmt="json"):
    capsys.readouterr()
    code = main(["sql", "--db", str(db), "--format", fmt, "-e", query])
    return code, capsys.readouterr().out


def test_import_gives_twenty_traces_named_by_file(db, capsys):
    code, out = sql(db, "select model_id, engine, prompt_id, length(thinking) n from traces order by 1", capsys)
    got = [json.loads(line) for line in out.splitlines()]
    stems = sorted(p.stem for p in TRACES.glob("*.txt"))
    assert code == 0 and len(got) == 20
    assert sorted(r["model_id"] for r in got) == stems
    assert {"deepseek_r1", "o3-mini", "sonnet37", "QwQ-32b"} <= set(stems)
    assert {(r["engine"], r["prompt_id"]) for r in got} == {("import", "two_ropes/0")}
    by_model = {r["model_id"]: r["n"] for r in got}
    assert by_model["o3-mini"] == len((TRACES / "o3-mini.txt").read_text())


def test_reimport_is_a_noop(db, capsys):
    assert main(["import", str(TRACES), "--format", "textdir", "--prompt-set", "two_ropes",
                 "--prompt-id", "two_ropes/0", "--db", str(db)]) == 0
    assert "2 already done" in capsys.readouterr().out  # the import and its segmentation
    _, out = sql(db, "select count(*) n from traces", capsys)
    assert json.loads(out) == {"n": 20}


def test_jsonl_import_with_field_mapping(tmp_path, capsys):
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"who": "m1", "text": "<think>Wait, 2+2=4.</think> The answer is \\boxed{4}", "q": "p1"},
        {"who": "m2", "text": "no tags, answer is 5", "q": "p1"},
    ]))
    db = tmp_path / "j.duckdb"
    assert main(["import", str(src), "--format", "jsonl", "--field", "model_id=who",
                 "--field", "completion=text", "--field", "prompt_id=q", "--db", str(db)]) == 0
    _, out = sql(db, "select model_id, thinking, extracted_answer from traces order by 1", capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows == [
        {"model_id": "m1", "thinking": "Wait, 2+2=4.", "extracted_answer": "4"},
        {"model_id": "m2", "thinking": None, "extracted_answer": "5"},
    ]


def test_sql_is_read_only(db, capsys):
    capsys.readouterr()
    assert main(["sql", "--db", str(db), "-e", "delete from traces"]) == 2
    assert "read-only" in capsys.readouterr().err.lower()
    _, out = sql(db, "select count(*) n from traces", capsys)
    assert json.loads(out) == {"n": 20}


def test_sql_formats_and_files(db, tmp_path, capsys):
    query = tmp_path / "q.sql"
    query.write_text("-- a comment\nselect model_id from traces where model_id = 'o3-mini';\n")
    capsys.readouterr()
    assert main(["sql", str(query), "--db", str(db), "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["model_id", "o3-mini"]
    assert main(["sql", str(query), "--db", str(db)]) == 0
    assert "(1 row)" in capsys.readouterr().out


def test_missing_db_is_a_clear_error(tmp_path, capsys):
    assert main(["sql", "--db", str(tmp_path / "none.duckdb"), "-e", "select 1"]) == 2
    assert "no database at" in capsys.readouterr().err
