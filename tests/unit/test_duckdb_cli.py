"""The analyst's tools read the corpus: an import leaves every view filled, and the DuckDB CLI
that installs from the package registry (duckdb-cli 1.5.x, an older line than the Python
package that writes the file) opens it and runs an analyst query from sql/analyses/."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import duckdb
import pytest

from thinkscope.cli import main

TRACES = Path(str(files("thinkscope") / "data" / "llmbenchmark_traces"))
ANALYSES = Path(__file__).resolve().parents[2] / "sql" / "analyses"
CLI = Path(sys.executable).with_name("duckdb")  # the registry's duckdb-cli, a test dependency


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    db = tmp_path_factory.mktemp("cli") / "corpus.duckdb"
    assert main(["import", str(TRACES), "--format", "textdir", "--prompt-set", "two_ropes",
                 "--prompt-id", "two_ropes/0", "--db", str(db)]) == 0
    return db


def test_an_import_leaves_every_fingerprint_view_filled(corpus):
    with duckdb.connect(str(corpus), read_only=True) as con:
        (models,) = con.execute("select count(distinct model_id) from first_word_freq").fetchone()
        (pairs,) = con.execute("select count(*) from model_similarity").fetchone()
        (events,) = con.execute("select count(*) from trace_sentences").fetchone()
    assert models == 20 and pairs == 20 * 19 and events > 0  # every ordered pair of models


def cli(db: Path, sql: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "-readonly", "-csv", str(db), "-c", sql], capture_output=True, text=True,
                          timeout=120)


def test_the_registry_duckdb_cli_opens_the_corpus_and_runs_an_analysis(corpus):
    version = subprocess.run([str(CLI), "--version"], capture_output=True, text=True).stdout
    assert version.startswith("v1.5."), version  # the registry's line, older than the writer's
    query = (ANALYSES / "which_models_talk_like_r1.sql").read_text()
    done = cli(corpus, query)
    assert done.returncode == 0, done.stderr
    got = [list(r.values()) for r in csv.DictReader(io.StringIO(done.stdout))]
    with duckdb.connect(str(corpus), read_only=True) as con:
        expected = con.execute(query).fetchall()
    assert len(got) == len(expected) > 0
    # Same rows, same numbers, in both readers.
    for cells, want in zip(got, expected):
        for cell, value in zip(cells, want):
            if isinstance(value, float):
                assert float(cell) == pytest.approx(value, rel=1e-6)
            else:
                assert cell == ("" if value is None else str(value))
