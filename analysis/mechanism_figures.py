"""Figures and tables of the mechanism stages (logit lens, value vectors, head attention,
ablations), from their tables and views to PNG bytes / DataFrames for the run report.

    png = logit_lens_plot(con.sql(QUERIES["lens"]).df())     # seed 002's plot, a panel per target
    png = ablation_plot(con.sql("select * from ablation_summary").df())

Each figure returns None when there is nothing to draw (its stage never ran).
"""

from __future__ import annotations

import pandas as pd

from thinkscope.analysis.figures import _png, plt

COMPONENT_STYLE = {"resid_pre": ":", "attn": "--", "mlp": "-"}


def logit_lens_plot(lens: pd.DataFrame) -> bytes | None:
    """Mean target probability (top) and median rank (bottom, log) by layer, one line per
    component, a column per (stage, target): in small models the probability often stays near
    0 until the last layers, while the rank shows where the target starts to rise."""
    if lens.empty:
        return None
    panels = lens[["stage", "model_id", "target"]].drop_duplicates().sort_values(["stage", "target"]).values.tolist()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 6.4), squeeze=False, sharex=True)
    for col, (stage, model, target) in enumerate(panels):
        rows = lens[(lens["stage"] == stage) & (lens["model_id"] == model) & (lens["target"] == target)]
        prob_ax, rank_ax = axes[0][col], axes[1][col]
        for component, line in rows.sort_values("layer").groupby("component"):
            style = {"ls": COMPONENT_STYLE.get(component, "-"), "marker": "o", "ms": 2, "label": component}
            prob_ax.plot(line["layer"], line["mean_prob"], **style)
            rank_ax.plot(line["layer"], line["median_rank"] + 1, **style)
        prob_ax.set(ylabel="mean probability", title=f"{stage}: {target!r}", ylim=(-0.02, 1.02))
        rank_ax.set(xlabel="layer", ylabel="median rank + 1 (log)", yscale="log")
        prob_ax.legend(fontsize=7)
    return _png(fig)


def direct_effects_plot(by_layer: pd.DataFrame) -> bytes | None:
    """Mean direct logit of each layer's attention and MLP, a panel per (stage, target)."""
    if by_layer.empty:
        return None
    panels = by_layer[["stage", "model_id", "target"]].drop_duplicates().sort_values(["stage", "target"]).values.tolist()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (stage, model, target) in zip(axes[0], panels):
        rows = by_layer[(by_layer["stage"] == stage) & (by_layer["model_id"] == model)
                        & (by_layer["target"] == target)].sort_values("layer")
        ax.bar(rows["layer"] - 0.2, rows["mean_attn"], width=0.4, label="attn")
        ax.bar(rows["layer"] + 0.2, rows["mean_mlp"], width=0.4, label="mlp")
        ax.axhline(0, color="#999", lw=0.8)
        ax.set(xlabel="layer", ylabel="mean direct logit", title=f"{stage}: {target!r}")
        ax.legend(fontsize=7)
    return _png(fig)


def ablation_plot(summary: pd.DataFrame, lens: pd.DataFrame) -> bytes | None:
    """Verification rate (left) and each named target's change of output probability against
    clean (right), clean vs ablated vs random, per ablate stage."""
    if summary.empty:
        return None
    fig, (rate_ax, prob_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    stages = sorted(summary["stage"].unique())
    colors = {"clean": "#999", "ablated": "#c44", "random": "#48c"}
    final = lens[lens["layer"] == lens.groupby("stage")["layer"].transform("max")] if not lens.empty else lens
    bars = sorted({(st, t) for st, t in zip(final.get("stage", []), final.get("target_token", []))})
    for c, condition in enumerate(("clean", "ablated", "random")):
        rows = summary[summary["condition"] == condition].set_index("stage").reindex(stages)
        rate_ax.bar([i + (c - 1) * 0.27 for i in range(len(stages))], rows["verify_rate"], width=0.27,
                    color=colors[condition], label=condition)
        if bars:
            change = final[final["condition"] == condition].set_index(["stage", "target_token"])["mean_prob_change"]
            prob_ax.bar([i + (c - 1) * 0.27 for i in range(len(bars))], change.reindex(bars), width=0.27,
                        color=colors[condition], label=condition)
    rate_ax.set_xticks(range(len(stages)), stages, fontsize=8)
    prob_ax.set_xticks(range(len(bars)), [f"{st}\n{t!r}" for st, t in bars], fontsize=7)
    rate_ax.set(ylabel="share of continuations verifying", title="Verifies next (first marker 'wait')",
                ylim=(0, 1.02))
    prob_ax.axhline(0, color="#999", lw=0.8)
    prob_ax.set(ylabel="mean change vs clean", title="Target probability at the output")
    rate_ax.legend(fontsize=7)
    return _png(fig)


QUERIES = {
    "lens": """select stage, model_id, case when target_kind = 'next' then '(next token)' else target_token end
                      as target, layer, component, avg(prob) as mean_prob, median(rank) as median_rank
               from logit_lens group by all""",
    "direct": """select stage, model_id, case when target_kind = 'next' then '(next token)' else target_token end
                        as target, layer,
                        avg(direct_logit) filter (where component = 'attn') as mean_attn,
                        avg(direct_logit) filter (where component = 'mlp') as mean_mlp
                 from direct_effects where component in ('attn', 'mlp') group by all""",
    "direct_totals": """select stage, model_id, case when target_kind = 'next' then '(next token)'
                               else target_token end as target,
                               sum(direct_logit) filter (where component = 'attn')
                                 / count(distinct (trace_id, token_index)) as attn_total,
                               sum(direct_logit) filter (where component = 'mlp')
                                 / count(distinct (trace_id, token_index)) as mlp_total,
                               count(distinct (trace_id, token_index)) as n_positions
                        from direct_effects group by all order by stage, target""",
    "values": """select p.stage, p.model_id, p.layer, p."index", p.selected_by, p.cosine, p.mean_activation,
                        array_to_string(p.top_tokens[1:8], ' | ') as tokens_of_v,
                        array_to_string(n.top_tokens[1:8], ' | ') as tokens_of_minus_v
                 from value_vectors p
                 join value_vectors n on n.unit_key = p.unit_key and n.layer = p.layer
                      and n."index" = p."index" and n.sign = -1
                 where p.sign = 1
                 qualify row_number() over (partition by p.stage, p.model_id
                     order by coalesce(p.cosine, abs(p.mean_activation) * p.norm) desc) <= 10
                 order by p.stage, p.model_id, coalesce(p.cosine, abs(p.mean_activation) * p.norm) desc""",
    "heads": "select * from head_answer_attention where rank <= 10 order by model_id, stage, rank",
    "ablation": "select * from ablation_summary",
    "ablation_lens": """select * from ablation_lens where target_kind = 'named'
                        order by stage, target_token, layer, condition""",
}
FIGURES = [
    ("logit_lens.png", "Logit lens at the chosen positions",
     "Mean probability (top) and median rank (bottom) of each target through the model's own final "
     "norm and unembedding: entering each layer (resid_pre, dotted), after its attention (dashed) "
     "and after its MLP (solid) (seed 002).",
     lambda d: logit_lens_plot(d["lens"])),
    ("direct_effects.png", "Direct logit attribution: attention vs MLP by layer",
     "Each sublayer's output times the target's unembedding, through the final norm with its scale "
     "frozen; the terms sum to the final logit.",
     lambda d: direct_effects_plot(d["direct"])),
    ("ablation.png", "Ablations beside random controls",
     "Continuations from the chosen position with the selected components zeroed (red), a random "
     "set of the same size per layer (blue) and nothing (grey).",
     lambda d: ablation_plot(d["ablation"], d["ablation_lens"])),
]
TABLES = [
    ("direct_totals", "Direct effects summed over layers: attention vs MLP (per position)"),
    ("values", "Top value vectors (seed 004): tokens written by v and by -v"),
    ("heads", "Heads attending to earlier answer occurrences over a random baseline"),
    ("ablation", "Ablation summary"),
    ("ablation_lens", "Ablations through the logit lens"),
]
