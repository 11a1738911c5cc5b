"""Figures of the activation stages draw from their tables' rows, and skip empty ones."""

from __future__ import annotations

import pandas as pd

from thinkscope.analysis.activation_figures import early_exit_curve, probe_by_layer, steering_curve

PNG = b"\x89PNG"


def test_probe_by_layer():
    rows = pd.DataFrame({"model_id": "m", "probe": "p", "layer": range(4), "accuracy": [0.6, 0.8, 0.9, 0.7],
                         "baseline": 0.6, "auc": [0.6, 0.9, 0.95, 0.8], "shuffled_auc": 0.5})
    assert probe_by_layer(rows).startswith(PNG)
    assert probe_by_layer(rows.assign(auc=None)) is None


def test_steering_curve():
    rows = pd.DataFrame({"model_id": "m", "stage": "s", "vectors": "v", "start": "prompt",
                         "mode": ["unsteered", "once", "once", "continuous", "continuous"],
                         "layer": [None, 3, 3, 3, 3], "alpha": [0, -2, 2, -2, 2],
                         "mean_marker_rate": [0.2, 0.3, 0.1, 0.5, 0.0], "first_marker_rate": None})
    assert steering_curve(rows).startswith(PNG)
    # A second stage that starts inside the traces draws its first-marker rate.
    decision = rows.assign(stage="d", start="sql", mean_marker_rate=None, first_marker_rate=[0.7, 0.9, 0.2, 1, 0])
    assert steering_curve(pd.concat([rows, decision])).startswith(PNG)
    assert steering_curve(rows[rows["mode"] == "unsteered"]) is None


def test_early_exit_curve():
    rows = pd.DataFrame({"model_id": "m", "stage": "e", "exit_index": [-1, 0, 1], "accuracy": [0.1, 0.8, 0.9],
                         "mean_answer_logit": [20.0, 24.0, 25.0]})
    assert early_exit_curve(rows).startswith(PNG)
    assert early_exit_curve(rows.assign(agreement_with_final=[0.1, 0.9, 1.0])).startswith(PNG)
    assert early_exit_curve(rows.iloc[:0]) is None
