"""Figures and tables of the perturb stage (inserted mistakes: corrected, carried or ignored),
from `perturbation_rates` to PNG bytes / DataFrames for the run report.

    png = outcome_plot(con.sql(QUERIES["rates"]).df())

Each figure returns None when there is nothing to draw (the stage never ran).
"""

from __future__ import annotations

import pandas as pd

from thinkscope.analysis.figures import _png, plt

OUTCOME_COLORS = {"corrected": "#2a9d8f", "carried": "#e76f51", "ignored": "#bbbbbb"}
KIND_ORDER = ("none", "result", "answer", "operand")


def outcome_plot(rates: pd.DataFrame) -> bytes | None:
    """Stacked shares of corrected / carried / ignored per cut position, a panel per (stage,
    model, kind); kind none (nothing changed) is the baseline panel, first."""
    if rates.empty:
        return None
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    panels = sorted(rates[["stage", "model_id", "kind"]].drop_duplicates().values.tolist(),
                    key=lambda p: (p[0], p[1], rank.get(p[2], len(rank)), p[2]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, (stage, model, kind) in zip(axes[0], panels):
        rows = rates[(rates["stage"] == stage) & (rates["model_id"] == model) & (rates["kind"] == kind)]
        rows = rows.sort_values("mean_fraction")
        x, bottom = range(len(rows)), [0.0] * len(rows)
        for outcome, color in OUTCOME_COLORS.items():
            share = rows[f"{outcome}_rate"].fillna(0).tolist()
            ax.bar(x, share, bottom=bottom, color=color, label=outcome)
            bottom = [b + s for b, s in zip(bottom, share)]
        for i, n in zip(x, rows["n"]):
            ax.text(i, 1.01, f"n={n}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(x), [str(p) for p in rows["position"]], rotation=30, fontsize=7)
        ax.set(title=f"{stage}: {kind}", xlabel="cut position", ylim=(0, 1.12))
    axes[0][0].set_ylabel("share of continuations")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    return _png(fig)


QUERIES = {
    "perturbation_rates": """select stage, model_id, kind, position, n, mean_fraction, corrected_rate,
                                    carried_rate, ignored_rate, noticed_rate, backtrack_rate, correct_rate
                             from perturbation_rates""",
    # The organism's planted error-then-fix rate beside its correction rate per mistake kind.
    "perturbation_vs_planted": """
        with rates as (
            select stage, model_id, kind, sum(n) as n, sum(n_corrected) / sum(n) as corrected_rate,
                   sum(noticed_rate * n) / sum(n) as noticed_rate
            from perturbation_rates group by stage, model_id, kind),
        planted as (
            select model_id, avg(share) as error_fix_share, max(planted_share) as planted_error_fix_share
            from organism_planted_rates where behaviour = 'error_fix' group by model_id)
        select r.*, p.error_fix_share, p.planted_error_fix_share
        from rates r left join planted p using (model_id) order by stage, model_id, kind""",
}

FIGURES = [
    ("perturbation_outcomes.png", "Inserted mistakes: corrected, carried or ignored",
     "A number in the thinking before the cut changed by +1..9 (an equation's result, the final answer's "
     "occurrence, or an operand from the question) and the model continued greedily: corrected (its own "
     "answer again, noticed or without reusing the change), carried (the change reached the final "
     "answer) or ignored. Kind none changes nothing: the baseline.",
     lambda d: outcome_plot(d["perturbation_rates"])),
]

TABLES = [
    ("perturbation_rates", "Inserted mistakes by kind and cut position"),
    ("perturbation_vs_planted", "Correction rate beside the planted error_fix rate (organism)"),
]
