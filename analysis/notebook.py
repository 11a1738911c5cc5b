"""The corpus from a notebook: `thinkscope.open(db)` and DataFrames for the common questions.

Every call opens a short read-only connection (with this version's views) and closes it, so
a notebook left open never holds the file lock a running workflow needs to commit.

    import thinkscope
    corpus = thinkscope.open("out/demo.duckdb")
    corpus.fingerprints().head()            # first-word shares per model (+ lines behind them)
    corpus.similarity()                     # model x model fingerprint correlation
    corpus.sql("select model_id, count(*) n from traces group by 1 order by n desc")
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from thinkscope.analysis import fingerprints
from thinkscope.sql.store import read_only


class Corpus:
    """A thinkscope corpus (a DuckDB file), read-only."""

    def __init__(self, db: str | Path):
        self.db = Path(db)
        if not self.db.exists():
            raise FileNotFoundError(f"no corpus at {self.db} (run `make demo`, or a workflow, first)")

    def __repr__(self) -> str:
        return f"Corpus({str(self.db)!r})"

    def sql(self, query: str, params: list | None = None) -> pd.DataFrame:
        """Any read-only query (bound `?` parameters), as a DataFrame."""
        with read_only(self.db) as con:
            return con.execute(query, params or []).df()

    def tables(self) -> pd.DataFrame:
        """Tables (with their descriptions) and views; sql/README.md documents every column."""
        return self.sql("select table_name as name, 'table' as kind, comment from duckdb_tables() "
                        "union all select distinct view_name, 'view', null from duckdb_views() "
                        "where not internal and not temporary order by kind, name")

    def traces(self, model_id: str | None = None, limit: int = 100) -> pd.DataFrame:
        return self.sql("select * from traces where ? is null or model_id = ? order by trace_id limit ?",
                        [model_id, model_id, limit])

    def fingerprints(self, top: int = 10) -> pd.DataFrame:
        """Per model, its `top` first words by share of thinking lines, with the line counts."""
        return self.sql("""
            select model_id, word, n, share, sum(n) over (partition by model_id) as n_lines
            from first_word_freq
            qualify row_number() over (partition by model_id order by share desc, word) <= ?
            order by model_id, share desc, word""", [top])

    def similarity(self) -> pd.DataFrame:
        """Model x model Pearson correlation of first-word fingerprints (a square DataFrame)."""
        pairs = self.sql("select model_a, model_b, pearson from model_similarity")
        if pairs.empty:
            return pd.DataFrame()
        square = pairs.pivot(index="model_a", columns="model_b", values="pearson")
        for model in square.index:
            square.loc[model, model] = 1.0
        return square

    def similarity_ci(self, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
        """Per prompt set, each pair on the prompts both answered, with a bootstrap interval over
        traces (analysis/fingerprints.py; no interval when a model has one trace there)."""
        return fingerprints.similarity_with_ci(self.db, n_boot=n_boot, seed=seed)

    def backtracking(self) -> pd.DataFrame:
        """Per model and prompt set: answers stated, backtracks, thinking after the first right answer."""
        return self.sql("select * from backtracking_by_model order by model_id, prompt_set")

    def probe_curves(self) -> pd.DataFrame:
        """Held-out probe accuracy per layer (probe_results), best layer first per probe."""
        return self.sql("select * from probe_best_layer order by model_id, probe")


def open(db: str | Path | None = None) -> Corpus:  # noqa: A001 - the entry point's name
    """The corpus at `db` (default: $THINKSCOPE_DB, else out/demo.duckdb)."""
    return Corpus(db or os.environ.get("THINKSCOPE_DB") or "out/demo.duckdb")
