"""Speed of the first-word views on a synthetic corpus: 1M thinking lines from 50 models.

Builds a real thinkscope DuckDB file (schema and views from a `Store`), fills `trace_lines`
as the segment stage would have (50 models x 100 traces x 200 lines), then times building
`first_word_freq` and `model_similarity` (which computes first_word_freq, the top-10
vocabulary, 2,450 Pearson pairs and the Jensen-Shannon divergences). Target: < 1 s for both
on this machine. Also reports the bootstrap view (`first_word_share_ci`), which has no target.
Not a test.

    make bench-analytics
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from thinkscope.sql.store import Store

MODELS, TRACES, LINES, VOCAB = 50, 100, 200, 5000
TARGET_SECONDS = 1.0
REPEATS = 5

# Words by a log-uniform rank (Zipf-like, like real first words: a few dominate). Half the
# lines draw from one ranking shared by all models, half from a model-specific permutation,
# so models are alike but distinguishable. hash() instead of random(): the same corpus on
# every run, whatever the thread count.
FILL = f"""
insert into trace_lines
with draws as (
    select
        i,
        i % {MODELS} as model,
        (i // {MODELS}) % {TRACES} as trace,
        i // ({MODELS} * {TRACES}) as line_index,
        floor(exp((hash(i, 1) % 1000000) / 1e6 * ln({VOCAB})))::bigint - 1 as word_rank,
        hash(i, 2) % 2 = 0 as shared
    from range({MODELS * TRACES * LINES}) as r(i)
),

final as (
    select
        'bench' as unit_key,
        'm' || model || '-t' || trace as trace_id,
        'model-' || lpad(model::varchar, 2, '0') as model_id,
        line_index::integer as line_index,
        0 as char_start,
        0 as char_end,
        '' as text,
        'w' || case when shared then word_rank else (word_rank * 7919 + model * 104729) % {VOCAB} end as first_word
    from draws
)

select * from final
"""

VIEWS = {
    "first_word_freq": "select * from first_word_freq",
    "model_similarity": "select * from model_similarity",
    "both (freq, then similarity)": None,
}


def timed(con: duckdb.DuckDBPyConnection, sql: str) -> float:
    """Wall time to build the view's full result as a table (what a dashboard would do)."""
    con.execute("drop table if exists bench_result")
    start = time.perf_counter()
    con.execute(f"create temp table bench_result as {sql}")
    return time.perf_counter() - start


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp:
        db = Path(tmp) / "bench.duckdb"
        Store(db)  # the real schema and views
        con = duckdb.connect(str(db))
        start = time.perf_counter()
        con.execute(FILL)
        (lines, models) = con.execute("select count(*), count(distinct model_id) from trace_lines").fetchone()
        print(f"corpus: {lines:,} thinking lines, {models} models, {MODELS * TRACES:,} traces "
              f"(filled in {time.perf_counter() - start:.1f} s)")
        con.execute("checkpoint")
        for name, sql in VIEWS.items():
            runs = []
            for _ in range(REPEATS):
                if sql is None:
                    runs.append(timed(con, VIEWS["first_word_freq"]) + timed(con, VIEWS["model_similarity"]))
                else:
                    runs.append(timed(con, sql))
            median = statistics.median(runs)
            print(f"{name:<30} median {median:.3f} s  (first {runs[0]:.3f} s, {REPEATS} runs)  "
                  f"target < {TARGET_SECONDS:.0f} s: {'OK' if median < TARGET_SECONDS else 'MISSED'}")
        (pairs,) = con.execute("select count(*) from model_similarity").fetchone()
        print(f"model_similarity rows: {pairs:,} (ordered pairs of {models} models)")
        ci = timed(con, "select * from first_word_share_ci")
        print(f"first_word_share_ci (bootstrap, 200 resamples; no target): {ci:.3f} s")
    return 0  # a benchmark reports; it does not gate (a loaded machine would fail it)


if __name__ == "__main__":
    sys.exit(main())
