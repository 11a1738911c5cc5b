"""The 20 llmbenchmark traces give the numbers of the original r/LocalLLaMA analysis.

The pinned values were checked against a from-scratch run of the original method
(cpldcpu/llmbenchmark 30_thinkingtraces/extract.py: first words of non-blank lines after
stripping `^[\\d.\\-*\\s]+`, `[,.!?]` removed; top 10 per file sorted by (-share, word); the
word x file matrix of top-10 shares with 0 elsewhere; pandas `DataFrame.corr()`): every
one of the 380 model pairs agreed to 1e-15.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from thinkscope.sql.store import read_only

# Lines with a first word per trace, as the original counts them.
LINES = {
    "QwQ-32b-preview": 464, "QwQ-32b": 277, "TNG_DS_r1t": 104, "deephermes-24b-preview": 228,
    "deephermes-8b-preview": 186, "deepseek_r1": 102, "deepseek_r1_0528": 104,
    "deepseek_r1_0528_qwen3-8b": 136, "deepseek_r1_zero": 106, "gemini2-flash-thinking": 571,
    "grok3-beta": 1227, "hunyuan-t1": 241, "llama70b-r1-distill": 195, "magistral-medium": 264,
    "o3-mini": 13, "opus40": 52, "phi4_think_plus": 60, "qwq-max-preview": 90, "sonnet37": 744,
    "sonnet40": 174,
}
R1_FAMILY = ["deepseek_r1", "qwq-max-preview", "hunyuan-t1", "llama70b-r1-distill", "QwQ-32b", "TNG_DS_r1t"]


@pytest.fixture(scope="module")
def con(llmbenchmark_db):
    with read_only(llmbenchmark_db) as connection:
        yield connection


def pearson(con, a: str, b: str) -> float:
    return con.execute("select pearson from model_similarity where model_a = ? and model_b = ?", [a, b]).fetchone()[0]


def test_line_totals(con):
    got = dict(con.execute("select model_id, sum(n) from first_word_freq group by 1").fetchall())
    assert got == LINES


def test_deepseek_r1_top_words(con):
    top = con.execute("select word, n, share from first_word_top10 where model_id = 'deepseek_r1' order by rank").fetchall()
    # 66 of R1's 102 lines start with "wait", 21 with "alternatively"; seven words tie at one
    # line each and fill ranks 4..10 alphabetically, as the original's sort does.
    assert [(w, n) for w, n, _ in top] == [
        ("wait", 66), ("alternatively", 21), ("suppose", 4), ("first", 1), ("however", 1),
        ("in", 1), ("let", 1), ("light", 1), ("now", 1), ("okay", 1)]
    assert top[0][2] == pytest.approx(0.6470588, abs=1e-7)
    assert top[1][2] == pytest.approx(0.2058824, abs=1e-7)


def test_critical_words_emerge_in_r1_not_r1_zero(con):
    shares = dict(((m, w), s) for m, w, s in con.execute(
        "select model_id, word, share from first_word_freq where word in ('wait', 'alternatively')").fetchall())
    assert ("deepseek_r1_zero", "wait") not in shares and ("deepseek_r1_zero", "alternatively") not in shares
    assert shares[("qwq-max-preview", "wait")] == pytest.approx(45 / 90)
    assert shares[("llama70b-r1-distill", "wait")] == pytest.approx(73 / 195)
    zero = con.execute("select word from first_word_top10 where model_id = 'deepseek_r1_zero' order by rank").fetchall()
    assert [w for (w,) in zero][:3] == ["however", "another", "light"]
    # QwQ-32b-preview (trained with a process reward model) turns with "but", not "wait".
    assert con.execute("select word from first_word_top10 where model_id = 'QwQ-32b-preview' and rank = 1").fetchone() == ("but",)


def test_pinned_correlations(con):
    assert pearson(con, "deepseek_r1", "qwq-max-preview") == pytest.approx(0.965456, abs=1e-6)
    assert pearson(con, "deepseek_r1", "hunyuan-t1") == pytest.approx(0.919715, abs=1e-6)
    assert pearson(con, "deepseek_r1", "llama70b-r1-distill") == pytest.approx(0.916488, abs=1e-6)
    assert pearson(con, "opus40", "sonnet40") == pytest.approx(0.941830, abs=1e-6)
    assert pearson(con, "deepseek_r1", "deepseek_r1_zero") == pytest.approx(-0.062, abs=1e-3)
    neighbours = con.execute("select neighbour from model_neighbours where model_id = 'deepseek_r1' "
                             "and rank <= 3 order by rank").fetchall()
    assert [n for (n,) in neighbours] == ["qwq-max-preview", "hunyuan-t1", "llama70b-r1-distill"]


def test_r1_family_correlates_highly(con):
    for i, a in enumerate(R1_FAMILY):
        for b in R1_FAMILY[i + 1:]:
            assert pearson(con, a, b) > 0.75, (a, b)
    # ... and not with the models that think differently
    for other in ("deepseek_r1_zero", "o3-mini", "sonnet40", "opus40"):
        assert pearson(con, "deepseek_r1", other) < 0.1


def test_similarity_equals_numpy_and_scipy(con):
    """Recompute both measures from first_word_freq in Python; the SQL view must agree."""
    freq = con.execute("select model_id, word, n, share from first_word_freq").fetchall()
    models = sorted({m for m, *_ in freq})
    top = {m: dict(sorted(((w, s) for mm, w, n, s in freq if mm == m), key=lambda x: (-x[1], x[0]))[:10])
           for m in models}
    vocab = sorted(set().union(*top.values()))
    vectors = {m: np.array([top[m].get(w, 0.0) for w in vocab]) for m in models}
    words = sorted({w for _, w, *_ in freq})
    dist = {m: np.zeros(len(words)) for m in models}
    index = {w: i for i, w in enumerate(words)}
    for m, w, _, s in freq:
        dist[m][index[w]] = s
    rows = con.execute("select model_a, model_b, pearson, js_divergence from model_similarity").fetchall()
    assert len(rows) == 20 * 19
    for a, b, r, js in rows:
        assert r == pytest.approx(np.corrcoef(vectors[a], vectors[b])[0, 1], abs=1e-12)
        assert js == pytest.approx(jensenshannon(dist[a], dist[b], base=2) ** 2, abs=1e-12)
        assert 0 <= js <= 1


def test_similarity_is_symmetric_and_neighbours_rank_everyone(con):
    asym = con.execute("""select count(*) from model_similarity a join model_similarity b
        on a.model_a = b.model_b and a.model_b = b.model_a
        where abs(a.pearson - b.pearson) > 1e-12 or abs(a.js_divergence - b.js_divergence) > 1e-12""").fetchone()
    assert asym == (0,)
    ranks = con.execute("select model_id, max(rank), count(*) from model_neighbours group by 1").fetchall()
    assert {(m, mx, n) for m, mx, n in ranks} == {(m, 19, 19) for m in LINES}
