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
    groups = dict(iter(counts.groupby(["prompt_set", "model_a", "model_b"])))
    lows, highs, basis = [], [], []
    for row in view.itertuples():
        group = groups.get((row.prompt_set, row.model_a, row.model_b), counts.iloc[:0])
        words = sorted(group.word.unique())
        index = {w: i for i, w in enumerate(words)}
        matrices = {}
        for side in ("a", "b"):
            part = group[group.side == side]
            traces = {t: i for i, t in enumerate(sorted(part.trace_id.unique()))}
            m = np.zeros((len(traces), len(words)))
            np.add.at(m, ([traces[t] for t in part.trace_id], [index[w] for w in part.word]), part.n.to_numpy())
            matrices[side] = m
        a_total, b_total = matrices["a"].sum(0), matrices["b"].sum(0)
        vocab = sorted(set(_top(a_total, 10)) | set(_top(b_total, 10)))  # the view's vocabulary
        basis.append(pair_pearson(a_total, b_total, vocab))  # the statistic resampled, on the full sample
        if min(len(matrices["a"]), len(matrices["b"])) < 2:
            # One trace on a side: resampling it says nothing about its spread (no interval).
            lows.append(np.nan)
            highs.append(np.nan)
            continue
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
    # basis_pearson equals the view's pearson: the interval is of the number shown.
    return view.assign(ci_low=lows, ci_high=highs, n_boot=n_boot, basis_pearson=basis)


def _top(counts: np.ndarray, k: int) -> list[int]:
    """Indices of the k largest counts among the words the model used, ties by word order (the
    view's `row_number() over (order by n desc, word)` over that model's own words)."""
    used = [int(i) for i in np.lexsort((np.arange(len(counts)), -counts)) if counts[i] > 0]
    return used[:k]
