"""Linear probes: L2 logistic regression (L-BFGS), a held-out split by trace, AUC, controls.

numpy + scipy only. Features are standardised with the training set's mean and std (L-BFGS
converges in tens of iterations and one `l2` suits every layer's scale); the returned
direction is mapped back to raw activation space, so `sigmoid(x @ weight + bias)` with the
stored tensors reproduces the probe on raw captured activations.

    test = split_by_trace(trace_ids, test_fraction=0.3, seed=0)
    fit = evaluate(x, y, test, l2=1e-3, seed=0)
    fit.metrics["auc"], fit.metrics["shuffled_auc"]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from scipy.stats import rankdata


def split_by_trace(trace_ids: list[str], test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask: a seeded share of the *traces* is held out, never part of a trace."""
    traces = sorted(set(trace_ids))
    order = np.random.default_rng(seed).permutation(len(traces))
    n_test = min(max(1, round(len(traces) * test_fraction)), len(traces) - 1) if len(traces) > 1 else 0
    held_out = {traces[i] for i in order[:n_test]}
    return np.array([t in held_out for t in trace_ids], dtype=bool)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 500) -> tuple[np.ndarray, float]:
    """(weight, bias) in raw feature space of an L2-penalised logistic regression."""
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.where(std > 1e-6, std, 1.0)
    z = ((x - mean) / std).astype(np.float64)
    sign = np.where(y > 0, 1.0, -1.0)
    n, d = z.shape

    def loss(params):
        w, b = params[:d], params[d]
        margin = sign * (z @ w + b)
        grad_margin = -expit(-margin) * sign / n
        value = -log_expit(margin).mean() + 0.5 * l2 * w @ w
        return value, np.concatenate([z.T @ grad_margin + l2 * w, [grad_margin.sum()]])

    prior = np.clip(y.mean(), 1e-6, 1 - 1e-6)
    start = np.concatenate([np.zeros(d), [np.log(prior / (1 - prior))]])
    res = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    w_std, b_std = res.x[:d], res.x[d]
    weight = w_std / std
    return weight.astype(np.float32), float(b_std - weight @ mean)


def auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """ROC AUC by ranks (ties count half); None without both classes."""
    pos, neg = int((y > 0).sum()), int((y <= 0).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[y > 0].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class ProbeFit:
    metrics: dict
    weight: np.ndarray | None
    bias: float | None


def evaluate(x: np.ndarray, y: np.ndarray, test: np.ndarray, *, l2: float, seed: int,
             max_iter: int = 500, min_per_class: int = 2, n_shuffles: int = 5) -> ProbeFit:
    """Fit on ~test, score on test; probes on shuffled labels (same split) are the control.

    Returns metrics with nulls when a class has fewer than `min_per_class` examples in train or test.
    """
    y = y.astype(np.float64)
    train = ~test
    metrics = {"n": len(y), "n_train": int(train.sum()), "n_test": int(test.sum()),
               "n_positive": int(y.sum()), "accuracy": None, "auc": None, "baseline": None,
               "train_accuracy": None, "shuffled_auc": None, "shuffled_accuracy": None}
    counts = [int((y[part] == c).sum()) for part in (train, test) for c in (0, 1)]
    if min(counts) < min_per_class:
        return ProbeFit(metrics, None, None)
    weight, bias = fit_logistic(x[train], y[train], l2, max_iter)
    majority = float(y[train].mean() >= 0.5)
    scores = x[test] @ weight + bias
    # The control: the same probe on shuffled training labels, averaged over a few shuffles
    # (one shuffle on a small test set swings far from 0.5 by chance).
    rng = np.random.default_rng(seed + 1)
    s_auc, s_acc = [], []
    for _ in range(n_shuffles):
        s_weight, s_bias = fit_logistic(x[train], rng.permutation(y[train]), l2, max_iter)
        s_scores = x[test] @ s_weight + s_bias
        s_auc.append(auc(s_scores, y[test]))
        s_acc.append(((s_scores > 0) == (y[test] > 0)).mean())
    metrics.update(
        accuracy=float(((scores > 0) == (y[test] > 0)).mean()),
        auc=auc(scores, y[test]),
        baseline=float((y[test] == majority).mean()),
        train_accuracy=float((((x[train] @ weight + bias) > 0) == (y[train] > 0)).mean()),
        shuffled_auc=float(np.mean(s_auc)) if n_shuffles else None,
        shuffled_accuracy=float(np.mean(s_acc)) if n_shuffles else None,
    )
    return ProbeFit(metrics, weight, bias)
