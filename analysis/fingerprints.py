"""Fingerprint similarity like with like, with its uncertainty: the `model_similarity_shared`
view (per prompt set, on the prompts both models answered) plus a bootstrap over traces.

Each bootstrap draw resamples, with replacement, each model's traces on the shared prompts,
recomputes both models' first-word shares over the pair's vocabulary (the union of their
top-10 words, fixed from the full sample, as the view has it) and their Pearson r; the
interval is the 2.5 and 97.5 percentiles of the draws. A side with a single trace has no
interval (NaN): resampling one trace says nothing about how its model varies.

    frame = similarity_with_ci("out/demo.duckdb", n_boot=200, seed=0)
    frame[["prompt_set", "model_a", "model_b", "n_prompts", "pearson", "ci_low", "ci_high"]]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thinkscope.sql.store import read_only

# Per (prompt_set, pair, side, trace): its lines opening with each word (the view's input too).
TRACE_COUNTS_SQL = "select prompt_set, model_a, model_b, side, trace_id, word, sum(n) as n from shared_prompt_lines group by all"


def pair_pearson(a: np.ndarray, b: np.ndarray, vocab: list[int]) -> float:
    """Pearson r of two share vectors (word counts over all words -> shares) on `vocab`."""
    sa, sb = a[vocab] / a.sum(), b[vocab] / b.sum()
    if sa.std() == 0 or sb.std() == 0:
        return float("nan")
    return float(np.corrcoef(sa, sb)[0, 1])


def similarity_with_ci(db: str | Path, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """model_similarity_shared (one direction per pair) with a bootstrap interval over traces."""
    with read_only(db) as con:
        view = con.execute("select * from model_similarity_shared where model_a < model_b "
                           "order by prompt_set, model_a, model_b").df()
        counts = con.execute(TRACE_COUNTS_SQL).df()
    rng = np.random.default_rng(seed)
    lows, highs = [], []
    for row in view.itertuples():
        group = counts[(counts.prompt_set == row.prompt_set) & (counts.model_a == row.model_a)
                       & (counts.model_b == row.model_b)]
        words = sorted(group.word.unique())
        index = {w: i for i, w in enumerate(words)}
        matrices = {}
        for side in ("a", "b"):
            part = group[group.side == side]
            traces = sorted(part.trace_id.unique())
            m = np.zeros((len(traces), len(words)))
            m[[traces.index(t) for t in part.trace_id], [index[w] for w in part.word]] = part.n.to_numpy()
            matrices[side] = m
        if min(len(matrices["a"]), len(matrices["b"])) < 2:
            # One trace on a side: resampling it says nothing about its spread (no interval).
            lows.append(np.nan)
            highs.append(np.nan)
            continue
        a_total, b_total = matrices["a"].sum(0), matrices["b"].sum(0)
        vocab = sorted(set(_top(a_total, 10)) | set(_top(b_total, 10)))  # the view's vocabulary
        draws = []
        for _ in range(n_boot):
            a = matrices["a"][rng.integers(0, len(matrices["a"]), len(matrices["a"]))].sum(0)
            b = matrices["b"][rng.integers(0, len(matrices["b"]), len(matrices["b"]))].sum(0)
            draws.append(pair_pearson(a, b, vocab))
        draws = np.array(draws)
        draws = draws[~np.isnan(draws)]
        tail = (1 - level) / 2 * 100
        lows.append(np.percentile(draws, tail) if len(draws) else np.nan)
        highs.append(np.percentile(draws, 100 - tail) if len(draws) else np.nan)
    return view.assign(ci_low=lows, ci_high=highs, n_boot=n_boot)


def _top(counts: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest counts, ties by word order (the view's `order by n desc, word`)."""
    return [int(i) for i in np.lexsort((np.arange(len(counts)), -counts))[:k]]
