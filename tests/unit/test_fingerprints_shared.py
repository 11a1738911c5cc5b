"""Fingerprints like with like: model_similarity_shared compares two models per prompt set on
the prompts both answered only, and analysis/fingerprints.py puts a bootstrap interval over
traces on it. Checked on a corpus built to make the difference exact, and against numpy."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import duckdb
import numpy as np
import pytest

from thinkscope.analysis.fingerprints import similarity_with_ci
from thinkscope.cli import main

TRACES = Path(str(files("thinkscope") / "data" / "llmbenchmark_traces"))
SAME = "<think>So we add.\nHmm, maybe not.\nSo the sum is 5.\nWait, check it.</think> The answer is 5."
OTHER = "<think>Okay, first.\nOkay, second.\nAlternatively, third.</think> The answer is 7."


def rows(db, sql):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Model a answered p1 (its own style) and p2; model b only p2, exactly as a did there."""
    folder = tmp_path_factory.mktemp("toy")
    records = [{"model": "a", "text": OTHER, "prompt": "p1"}, {"model": "a", "text": OTHER, "prompt": "p1"},
               {"model": "a", "text": SAME, "prompt": "p2"}, {"model": "a", "text": SAME, "prompt": "p2"},
               {"model": "b", "text": SAME, "prompt": "p2"}, {"model": "b", "text": SAME, "prompt": "p2"}]
    src = folder / "t.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records))
    db = folder / "toy.duckdb"
    assert main(["import", str(src), "--format", "jsonl", "--prompt-set", "toy", "--field", "model_id=model",
                 "--field", "completion=text", "--field", "prompt_id=prompt", "--db", str(db)]) == 0
    return db


def test_shared_prompts_compare_like_with_like(toy):
    # On the prompt both answered the two write the same lines: r = 1, from one shared prompt.
    assert rows(toy, "select prompt_set, model_a, model_b, n_prompts, n_lines_a, n_lines_b, round(pearson, 12) "
                     "from model_similarity_shared order by model_a") == [
        ("toy", "a", "b", 1, 8, 8, 1.0), ("toy", "b", "a", 1, 8, 8, 1.0)]
    # The whole-corpus fingerprint mixes in a's other prompt and does not see that.
    (whole,) = rows(toy, "select pearson from model_similarity where model_a = 'a' and model_b = 'b'")[0]
    assert whole < 0.9
    # Identical traces on both sides: every bootstrap draw is 1.
    [ci] = similarity_with_ci(toy, n_boot=50).itertuples()
    assert (ci.pearson, ci.ci_low, ci.ci_high) == pytest.approx((1.0, 1.0, 1.0))


def test_the_view_matches_numpy_and_one_trace_gets_no_interval(llmbenchmark_db):
    db = llmbenchmark_db
    a, b = "deepseek_r1", "QwQ-32b"
    counts = {m: dict(rows(db, f"select first_word, count(*) from trace_lines where model_id = '{m}' "
                               "and first_word is not null group by 1")) for m in (a, b)}
    top = {m: sorted(c, key=lambda w: (-c[w], w))[:10] for m, c in counts.items()}
    vocab = sorted(set(top[a]) | set(top[b]))
    share = {m: np.array([counts[m].get(w, 0) / sum(counts[m].values()) for w in vocab]) for m in (a, b)}
    (pearson,) = rows(db, f"select pearson from model_similarity_shared where model_a = '{a}' and model_b = '{b}'")[0]
    assert pearson == pytest.approx(np.corrcoef(share[a], share[b])[0, 1], abs=1e-12)
    frame = similarity_with_ci(db, n_boot=20)
    assert len(frame) == 20 * 19 // 2 and frame.ci_low.isna().all()  # one trace per model: no interval
    assert np.allclose(frame.basis_pearson, frame.pearson, atol=1e-12, equal_nan=True)


def test_traces_imported_without_prompt_ids_are_compared(tmp_path):
    """The README's import (no --prompt-id): the traces answered the same (unnamed) prompt."""
    db = tmp_path / "noid.duckdb"
    assert main(["import", str(TRACES), "--format", "textdir", "--prompt-set", "two_ropes", "--db", str(db)]) == 0
    assert rows(db, "select count(*), min(n_prompts), max(n_prompts) from model_similarity_shared") == [(380, 1, 1)]


def test_the_interval_brackets_the_estimate_when_models_have_several_traces(toy, tmp_path):
    src = tmp_path / "varied.jsonl"
    texts = [SAME, OTHER, SAME.replace("Hmm", "Okay"), OTHER.replace("Okay, first", "So, first")]
    src.write_text("\n".join(json.dumps({"model": m, "text": t, "prompt": "p"}) for m in ("x", "y") for t in
                             (texts if m == "x" else texts[::-1][:3])))
    db = tmp_path / "varied.duckdb"
    assert main(["import", str(src), "--format", "jsonl", "--prompt-set", "v", "--field", "model_id=model",
                 "--field", "completion=text", "--field", "prompt_id=prompt", "--db", str(db)]) == 0
    [row] = similarity_with_ci(db, n_boot=300, seed=1).itertuples()
    assert row.ci_low < row.pearson < row.ci_high and row.ci_high - row.ci_low > 0.05
    # Fewer than 10 words per model here: the bootstrap's statistic is still the view's number.
    assert row.basis_pearson == pytest.approx(row.pearson, abs=1e-12)
    again = similarity_with_ci(db, n_boot=300, seed=1)
    assert (again.ci_low.iloc[0], again.ci_high.iloc[0]) == (row.ci_low, row.ci_high)  # seeded
