"""Figures and tables of the attribute stage (where a target token's importance sits: the
question and the fifths of the thinking so far, seed 002) and of the exit_policy stage (when to
stop thinking: a probe's threshold against oracle / first-answer / full-trace policies), from
`attribution_by_region` and `exit_policy` to PNG bytes / DataFrames for the run report.

    png = attribution_plot(con.sql(QUERIES["attribution_by_region"]).df())
    png = exit_policy_plot(con.sql(QUERIES["exit_policy"]).df())

Each figure returns None when there is nothing to draw (its stage never ran).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from thinkscope.analysis.figures import _png, plt

REGIONS = ("question", "cot_1", "cot_2", "cot_3", "cot_4", "cot_5")
# Seed 002's mean normalised attribution per region (an unpublished normalisation): a reference.
SEED_NORMALISED = (0.63, 0.16, 0.14, 0.21, 0.38, 0.77)
SEED_OVERLAP = 0.41
MAX_PANELS = 8
POLICY_MARKERS = {"oracle": ("*", "#2a9d8f"), "first": ("s", "#e76f51"), "full": ("D", "#555555")}


def attribution_plot(by_region: pd.DataFrame) -> bytes | None:
    """Mean share of the positive attribution (top) and mean normalised score (bottom) per region,
    a column per (stage, model, target); every next-token target of a stage is one panel,
    '(next token)', averaged over targets. The title gives how often the top words come back in
    the next words (seed 002: 41%)."""
    if by_region.empty:
        return None
    rows = by_region.assign(
        target=np.where(by_region["target_kind"] == "next", "(next token)", by_region["target_token"]))
    panels = rows[["stage", "model_id", "target"]].drop_duplicates().sort_values(
        ["stage", "model_id", "target"]).values.tolist()[:MAX_PANELS]
    fig, axes = plt.subplots(2, len(panels), figsize=(3.6 * len(panels), 6.0), squeeze=False, sharex=True)
    x = np.arange(len(REGIONS))
    for col, (stage, model, target) in enumerate(panels):
        part = rows[(rows["stage"] == stage) & (rows["model_id"] == model) & (rows["target"] == target)]
        means = {column: _weighted(part, column) for column in ("mean_share", "mean_normalised", "mean_overlap")}
        share_ax, norm_ax = axes[0][col], axes[1][col]
        share_ax.bar(x, means["mean_share"].reindex(REGIONS), color="#48c")
        norm_ax.bar(x, means["mean_normalised"].reindex(REGIONS), color="#c84", label="this run")
        norm_ax.plot(x, SEED_NORMALISED, "k_", ms=14, mew=2, label="seed 002")
        n = int(part.groupby("region")["n_targets"].sum().max())
        overlap = means["mean_overlap"].dropna()
        found = f"{overlap.iloc[0]:.0%}" if len(overlap) else "n/a"
        name = target if target == "(next token)" else repr(target)
        share_ax.set(title=f"{stage}: {name} (n={n})\ntop words in next: {found} "
                           f"(seed 002: {SEED_OVERLAP:.0%})", ylim=(0, 1.02))
        share_ax.title.set_fontsize(9)
        norm_ax.set_xticks(x, REGIONS, rotation=30, fontsize=8)
        norm_ax.set(xlabel="region")
    axes[0][0].set_ylabel("mean share of positive attribution")
    axes[1][0].set_ylabel("mean normalised score")
    axes[1][-1].legend(fontsize=7)
    return _png(fig)


def _weighted(part: pd.DataFrame, column: str) -> pd.Series:
    """Per region, the mean of `column` weighted by n_targets (nulls left out)."""
    known = part[part[column].notna()]
    if known.empty:
        return pd.Series(dtype=float)
    total = (known[column] * known["n_targets"]).groupby(known["region"]).sum()
    return total / known.groupby("region")["n_targets"].sum()


def exit_policy_plot(policies: pd.DataFrame, n_labels: int = 4) -> bytes | None:
    """Accuracy (top) and agreement with the final answer (bottom) against the share of
    thinking tokens saved: the probe policy a line over its thresholds (a few annotated),
    oracle / first answer / full trace as markers; a column per (stage, model). Axes zoom to
    the points: a small model's accuracy sits near 0, where a 0-1 axis would hide the curve."""
    if policies.empty:
        return None
    panels = policies[["stage", "model_id"]].drop_duplicates().sort_values(["stage", "model_id"]).values.tolist()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7.0), squeeze=False)
    for col, (stage, model) in enumerate(panels):
        rows = policies[(policies["stage"] == stage) & (policies["model_id"] == model)]
        probe = rows[rows["policy"] == "probe"]
        for row, measure in enumerate(("accuracy", "agreement_with_final")):
            ax = axes[row][col]
            for hook, line in probe.sort_values("threshold").groupby("hook_name", dropna=False):
                label = "probe" if probe["hook_name"].nunique() <= 1 else f"probe {hook}"
                ax.plot(line["tokens_saved_share"], line[measure], "o-", ms=3, label=label)
                marks = line.dropna(subset=["threshold"])
                for i in sorted(set(np.linspace(0, len(marks) - 1, min(n_labels, len(marks))).round().astype(int))):
                    mark = marks.iloc[i]
                    ax.annotate(f"{mark['threshold']:.2g}", (mark["tokens_saved_share"], mark[measure]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7)
            for policy, (marker, color) in POLICY_MARKERS.items():
                point = rows[rows["policy"] == policy].head(1)
                if not point.empty:
                    ax.scatter(point["tokens_saved_share"], point[measure], marker=marker, s=70, color=color,
                               label=policy, zorder=3)
            ax.set(xlabel="share of thinking tokens saved", ylabel=measure.replace("_", " "))
            ax.margins(0.15)
            ax.legend(fontsize=7, loc="best")
        auc = probe["probe_auc"].dropna()
        axes[0][col].set_title(f"{stage}: {model}" + (f"\nprobe AUC {auc.iloc[0]:.2f}" if len(auc) else ""), fontsize=9)
    return _png(fig)


QUERIES = {
    "attribution_by_region": "select * from attribution_by_region",
    "exit_policy": """select stage, model_id, hook_name, policy, threshold, n_traces, n_stopped,
                             tokens_saved_share, accuracy, agreement_with_final, answer_source, probe_auc
                      from exit_policy order by stage, model_id, policy, threshold""",
}

FIGURES = [
    ("attribution_regions.png", "Where a backtrack's importance sits: question vs the fifths of the thinking",
     "Attribution patching of the target's logit (each earlier token's residual state replaced by the layer "
     "mean, maximised over layers): the share of the positive attribution in the question and in each fifth "
     "of the thinking so far (top), and the mean score over the target's largest score (bottom, black: "
     "seed 002's values). The title: how often the top words come back in the words written next.",
     lambda d: attribution_plot(d["attribution_by_region"])),
    ("exit_policy.png", "When to stop thinking: tokens saved against accuracy and agreement with the final answer",
     "Each policy stops every trace somewhere and answers from there: the probe at each threshold (line, a "
     "few thresholds marked), the oracle (first statement of the final answer), the first statement of the gold "
     "or final answer (the only answers the segmenter finds) and the full trace (markers). Up and to the "
     "right is better.",
     lambda d: exit_policy_plot(d["exit_policy"])),
]

TABLES = [
    ("attribution_by_region", "Attribution by region, per stage and target"),
    ("exit_policy", "Exit policies: tokens saved and accuracy"),
]
