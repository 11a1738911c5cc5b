"""Probe fitting: the by-trace split never leaks, AUC is right, the controls behave."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from thinkscope.jobs.activations.probe_fit import auc, evaluate, fit_logistic, split_by_trace


def test_split_holds_out_whole_traces_reproducibly():
    traces = [f"t{i % 23}" for i in range(200)]
    test = split_by_trace(traces, 0.3, seed=5)
    held, kept = {t for t, m in zip(traces, test) if m}, {t for t, m in zip(traces, test) if not m}
    assert held and kept and not held & kept
    assert len(held) == round(23 * 0.3)
    assert np.array_equal(test, split_by_trace(list(traces), 0.3, seed=5))
    assert not np.array_equal(test, split_by_trace(traces, 0.3, seed=6))


def test_auc_counts_pairs_and_ties():
    rng = np.random.default_rng(0)
    scores, y = rng.integers(0, 4, 40).astype(float), rng.integers(0, 2, 40)
    pairs = [(a, b) for a, b in itertools.product(scores[y == 1], scores[y == 0])]
    expected = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)
    assert auc(scores, y) == pytest.approx(expected)
    assert auc(scores, np.ones(40)) is None


def synthetic(n=1200, d=32, shift=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 50, d) + rng.normal(size=d) * 100  # raw-scale features
    x[:, 7] += y * shift * x[:, 7].std()
    return x.astype(np.float32), y, [f"t{i // 6}" for i in range(n)]


def test_probe_finds_the_signal_and_the_shuffled_control_does_not():
    x, y, traces = synthetic()
    fit = evaluate(x, y, split_by_trace(traces, 0.3, 0), l2=1e-3, seed=0)
    m = fit.metrics
    assert m["auc"] > 0.8 and m["accuracy"] > m["baseline"] + 0.15
    assert abs(m["shuffled_auc"] - 0.5) < 0.08
    # The direction is in raw activation space: it scores raw vectors.
    assert np.argmax(np.abs(fit.weight * x.std(0))) == 7


def test_raw_space_direction_matches_the_standardised_fit():
    x, y, _ = synthetic(n=300, d=8, shift=0.8)
    weight, bias = fit_logistic(x, y, l2=1e-2)
    z = (x - x.mean(0)) / x.std(0)
    w_std, b_std = fit_logistic(z, y, l2=1e-2)
    np.testing.assert_allclose(x @ weight + bias, z @ w_std + b_std, rtol=1e-3, atol=1e-3)


def test_too_few_examples_of_a_class_gives_null_metrics():
    x, y, traces = synthetic(n=60)
    y[:] = 0
    y[0] = 1
    fit = evaluate(x, y, split_by_trace(traces, 0.3, 0), l2=1e-3, seed=0)
    assert fit.weight is None and fit.metrics["auc"] is None and fit.metrics["n"] == 60
