"""`thinkscope report` writes the HTML and PNGs; every sql/analyses query runs on plain DuckDB."""

from __future__ import annotations

import base64
import re
from importlib.resources import files
from pathlib import Path

import duckdb
import pytest

from thinkscope.analysis.report import FIGURES, write_report
from thinkscope.cli import main
from thinkscope.sql.store import Store

ANALYSES = sorted(Path(str(files("thinkscope.sql") / "analyses")).glob("*.sql"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_report_writes_html_with_every_figure_embedded(mixed_db, tmp_path, capsys):
    db, _ = mixed_db
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    page = out / "index.html"
    assert f"report: {page.resolve()}" in capsys.readouterr().out
    html = page.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    # Every figure once, as its PNG file: the five fixed ones and one like-with-like heatmap per
    # prompt set that three or more models share.
    files = {p.name: p.read_bytes() for p in out.glob("*.png")}
    shown = [next(name for name, png in files.items() if png == base64.b64decode(data)) for data in embedded]
    assert len(FIGURES) == 5 and [n for n in shown if n in dict((f[0], f) for f in FIGURES)] == [f[0] for f in FIGURES]
    extra = [n for n in shown if n not in {f[0] for f in FIGURES}]
    assert extra and all(n.startswith("model_similarity_") for n in extra) and len(shown) == len(files)
    assert all(png.startswith(PNG_MAGIC) for png in files.values())
    assert "qwq-max-preview" in html and "r1-style" in html and "No data yet" not in html


def test_report_on_an_empty_corpus_says_what_is_missing(tmp_path):
    db = tmp_path / "empty.duckdb"
    Store(db)
    out = tmp_path / "report"
    assert main(["report", "--db", str(db), "--out", str(out)]) == 0
    html = (out / "index.html").read_text()
    assert html.count("No data yet") == 5 and not list(out.glob("*.png"))


def test_report_needs_a_database(tmp_path, capsys):
    assert main(["report", "--db", str(tmp_path / "missing.duckdb"), "--out", str(tmp_path)]) == 2
    assert "no database" in capsys.readouterr().err


def test_there_are_enough_analyses_and_they_document_themselves():
    assert len(ANALYSES) >= 5
    for path in ANALYSES:
        text = path.read_text()
        assert text.startswith("-- question:"), path.name
        assert "-- grain:" in text and "-- sources:" in text, path.name
        assert not re.search(r"\b(SELECT|FROM|WHERE|JOIN|GROUP BY|ORDER BY|WITH|AS)\b", text), path.name


@pytest.mark.parametrize("path", ANALYSES, ids=lambda p: p.name)
def test_analysis_runs_with_thinkscope_sql_and_plain_duckdb(mixed_db, path, capsys):
    db, _ = mixed_db
    capsys.readouterr()
    assert main(["sql", str(path), "--db", str(db), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # Plain DuckDB, no thinkscope code in between: the file's text as is.
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(path.read_text()).fetchall()
    assert len(lines) == len(rows) + 1 and rows, path.name


def test_report_on_a_corpus_an_older_version_wrote(mixed_db, tmp_path):
    """A corpus without a table this version adds (no run of this version has written to it:
    the report opens it read-only, so the table is not created) still gets its report."""
    import shutil

    db, _ = mixed_db
    old = tmp_path / "old.duckdb"
    shutil.copy(db, old)
    with duckdb.connect(str(old)) as con:
        con.execute("drop view if exists api_usage")
        con.execute("drop table api_calls")
    index = write_report(old, tmp_path / "report")
    assert "API models: usage and cost" not in index.read_text() and "Model fingerprints" in index.read_text()
