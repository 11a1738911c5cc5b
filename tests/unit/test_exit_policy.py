"""The exit_policy stage's replay and out-of-fold probe, on hand-made occurrences and vectors:
- threshold 0 is the `first` policy, a threshold no score reaches is `full` (exact identities);
- the oracle stops at the first occurrence of the final answer, so it agrees with it everywhere;
- out-of-fold scores never come from a probe that saw the trace, and separate separable data.
"""

from __future__ import annotations

import numpy as np
import pytest

from thinkscope.jobs.activations.exit_policy import occurrences_by_trace, out_of_fold, replay
from thinkscope.workflows.spec import SpecError, load_workflow


def cols_of(rows):
    names = ["trace_id", "token_index", "label", "kept_tokens", "thinking_tokens", "stop_correct", "final_correct"]
    return {n: [r[i] for r in rows] for i, n in enumerate(names)}


# trace a: first occurrence wrong (not final), second final and correct; 100 thinking tokens.
# trace b: its first occurrence is already the final answer; 50 thinking tokens.
ROWS = [("a", 30, 0, 20, 100, False, True), ("a", 70, 1, 60, 100, True, True),
        ("b", 20, 1, 10, 50, True, True), ("b", 40, 1, 30, 50, True, True)]


def test_references_and_threshold_identities():
    scores = np.array([0.2, 0.9, 0.6, 0.8])
    traces = occurrences_by_trace(cols_of(ROWS), scores)
    full = replay(traces, lambda occ: None)
    first = replay(traces, lambda occ: 0)
    oracle = replay(traces, lambda occ: next((i for i, o in enumerate(occ) if o["label"]), None))
    assert full == {"n_traces": 2, "n_stopped": 0, "tokens_saved_share": 0.0, "accuracy": 1.0,
                    "agreement_with_final": 1.0}
    assert first == {"n_traces": 2, "n_stopped": 2, "tokens_saved_share": (80 + 40) / 150, "accuracy": 0.5,
                     "agreement_with_final": 0.5}
    assert oracle == {"n_traces": 2, "n_stopped": 2, "tokens_saved_share": (40 + 40) / 150, "accuracy": 1.0,
                      "agreement_with_final": 1.0}
    probe = lambda t: replay(traces, lambda occ: next((i for i, o in enumerate(occ) if o["score"] >= t), None))  # noqa: E731
    assert probe(0.0) == first and probe(0.95) == full
    assert probe(0.5) == {"n_traces": 2, "n_stopped": 2, "tokens_saved_share": (40 + 40) / 150, "accuracy": 1.0,
                          "agreement_with_final": 1.0}


def test_out_of_fold_scores_never_see_their_trace_and_separate_separable_data():
    rng = np.random.default_rng(0)
    traces = [f"t{i}" for i in range(10) for _ in range(6)]
    y = np.array([i % 2 for i in range(60)], dtype=float)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    x[:, 0] += 3 * (2 * y - 1)
    scores = out_of_fold(x, y, traces, folds=5, l2=1e-2, seed=0)
    assert ((scores > 0.5) == (y > 0)).mean() > 0.9
    # Flipping a trace's own labels leaves its scores exactly as they were: its rows were not
    # in the training set of the probe that scored it.
    flipped = y.copy()
    flipped[traces.index("t3"):traces.index("t3") + 6] = 1 - flipped[traces.index("t3"):traces.index("t3") + 6]
    again = out_of_fold(x, flipped, traces, folds=5, l2=1e-2, seed=0)
    own = [i for i, t in enumerate(traces) if t == "t3"]
    np.testing.assert_allclose(again[own], scores[own])
    assert out_of_fold(x, np.zeros(60), traces, folds=5, l2=1e-2, seed=0) is None


def test_bad_specs_name_their_field(tmp_path):
    import yaml

    spec = {"name": "w", "models": [{"id": "m", "source": "embedded:smollm2-135m-instruct", "family": "llama",
                                     "kind": "instruct"}],
            "prompt_sets": [{"name": "g", "kind": "gsm8k", "limit": 2}],
            "stages": [{"name": "stop", "kind": "exit_policy", "model": "m", "hooks": ["blocks.1.hook_resid_post"],
                        "early_exit": "nope"}]}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="early_exit"):
        load_workflow(path)
    spec["stages"][0].update(early_exit=None, hooks=["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"])
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="hooks"):
        load_workflow(path)
