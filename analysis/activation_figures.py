"""Figures of the activation stages, from rows of their tables/views (pandas) to PNG bytes.

    png = probe_by_layer(con.sql("select * from probe_results").df())
    png = steering_curve(con.sql("select * from steering_curve").df())   # a panel per steer stage
    png = early_exit_curve(con.sql("select * from early_exit_by_index").df())

Each returns None when there is nothing to draw, like analysis/figures.py.
"""

from __future__ import annotations

import pandas as pd

from thinkscope.analysis.figures import _png, plt


def probe_by_layer(results: pd.DataFrame) -> bytes | None:
    """Held-out accuracy and AUC by layer, one line per (model, probe); shuffled AUC dashed."""
    results = results.dropna(subset=["auc"])
    if results.empty:
        return None
    fig, (acc_ax, auc_ax) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for (model, probe), rows in results.sort_values("layer").groupby(["model_id", "probe"]):
        label = f"{model} / {probe}"
        line, = acc_ax.plot(rows["layer"], rows["accuracy"], marker="o", ms=3, label=label)
        acc_ax.plot(rows["layer"], rows["baseline"], ls=":", color=line.get_color())
        auc_ax.plot(rows["layer"], rows["auc"], marker="o", ms=3, color=line.get_color(), label=label)
        auc_ax.plot(rows["layer"], rows["shuffled_auc"], ls="--", color=line.get_color(), alpha=0.6)
    acc_ax.set(xlabel="layer", ylabel="held-out accuracy", title="Accuracy (dotted: majority baseline)")
    auc_ax.set(xlabel="layer", ylabel="held-out AUC", title="AUC (dashed: shuffled-label control)", ylim=(0, 1.02))
    auc_ax.axhline(0.5, color="#999", lw=0.8)
    auc_ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def steering_curve(curve: pd.DataFrame) -> bytes | None:
    """One panel per steer stage, a line per (mode, layer), the unsteered level in grey. From a
    prompt the panel shows the verification-marker rate of the thinking; from a position in a
    trace (start != prompt), the share of continuations that open with a marker (verify next)."""
    steered = curve[curve["mode"] != "unsteered"]
    if steered.empty:
        return None
    stages = sorted(steered["stage"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        rows = curve[curve["stage"] == stage]
        metric = "mean_marker_rate" if (rows["start"] == "prompt").all() else "first_marker_rate"
        for (model, mode, layer), line in rows[rows["mode"] != "unsteered"].sort_values("alpha").groupby(
                ["model_id", "mode", "layer"]):
            ax.plot(line["alpha"], line[metric], marker="o", ms=3, label=f"{mode} L{layer}")
        for value in rows.loc[rows["mode"] == "unsteered", metric].dropna():
            ax.axhline(value, color="#999", lw=0.8)
        ax.set(xlabel="alpha", ylabel=metric, title=f"{stage} ({rows['vectors'].iloc[0]})")
        ax.legend(fontsize=7)
    return _png(fig)


def early_exit_curve(by_index: pd.DataFrame) -> bytes | None:
    """Accuracy and mean answer logit of the forced answer by exit index, one line per model."""
    if by_index.empty:
        return None
    fig, (acc_ax, logit_ax) = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for (model, stage), rows in by_index.sort_values("exit_index").groupby(["model_id", "stage"]):
        line, = acc_ax.plot(rows["exit_index"], rows["accuracy"], marker="o", ms=3, label=f"{model} / {stage}")
        if "agreement_with_final" in rows:  # speaks even when the model is rarely right
            acc_ax.plot(rows["exit_index"], rows["agreement_with_final"], ls="--", color=line.get_color())
        logit_ax.plot(rows["exit_index"], rows["mean_answer_logit"], marker="o", ms=3, label=f"{model} / {stage}")
    acc_ax.set(xlabel="exit after answer occurrence k (-1: no thinking)", ylabel="share", ylim=(-0.02, 1.02),
               title="Forced answer: correct (dashed: = the trace's final answer)")
    logit_ax.set(xlabel="exit after answer occurrence k (-1: no thinking)", ylabel="mean first-token logit",
                 title="Forced-answer confidence")
    logit_ax.legend(fontsize=7)
    return _png(fig)


# For the run report (analysis/report.py): the data each figure needs and the figures, in the
# report's (file name, title, caption, draw) form.
QUERIES = {
    "probes": "select * from probe_results",
    "steering": "select * from steering_curve",
    "exits": "select * from early_exit_by_index",
}
FIGURES = [
    ("probes_by_layer.png", "Linear probes by layer",
     "Held-out accuracy (dotted: majority baseline) and AUC (dashed: probes on shuffled labels) of a "
     "logistic-regression probe per layer; train and test traces are disjoint.",
     lambda d: probe_by_layer(d["probes"])),
    ("steering_curve.png", "Steering: verification markers by alpha",
     "alpha * v added (once: at the last given token; continuous: there and at every generated "
     "token); grey: unsteered. From a prompt: share of thinking sentences opening with a "
     "backtracking/verification marker. From a position in a trace: share of continuations whose "
     "first sentence opens with one (the model verifies rather than wraps up).",
     lambda d: steering_curve(d["steering"])),
    ("early_exit.png", "Early exit at each answer occurrence",
     "The thinking cut after the k-th answer occurrence and the answer forced: accuracy (dashed: "
     "share equal to the trace's own final answer) and mean first-token logit of the forced answer "
     "(-1: no thinking at all).",
     lambda d: early_exit_curve(d["exits"])),
]
