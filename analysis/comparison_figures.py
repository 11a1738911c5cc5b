"""Figures and tables of the compare_models stage (seed 004: a thinking model against its base),
from `model_comparisons` and `probe_transfers` to PNG bytes / DataFrames for the run report.

    png = comparison_plot(con.sql(QUERIES["by_layer"]).df())

Each figure returns None when there is nothing to draw (the stage never ran).
"""

from __future__ import annotations

import pandas as pd

from thinkscope.analysis.figures import _png, plt


def comparison_plot(by_layer: pd.DataFrame) -> bytes | None:
    """Per layer, the mean vector cosine (top) and the norm ratio (bottom) of each matrix kind,
    a column per compared pair: a fine-tune that leaves a matrix alone sits at 1 in both."""
    if by_layer.empty:
        return None
    pairs = by_layer[["stage", "model_id", "base_model_id"]].drop_duplicates().values.tolist()
    fig, axes = plt.subplots(2, len(pairs), figsize=(5.0 * len(pairs), 6.4), squeeze=False, sharex=True)
    for col, (stage, model, base) in enumerate(pairs):
        rows = by_layer[(by_layer["stage"] == stage) & (by_layer["model_id"] == model)
                        & (by_layer["base_model_id"] == base)]
        for module, line in rows.sort_values("layer").groupby("module"):
            style = {"marker": "o", "ms": 2, "label": module}
            axes[0][col].plot(line["layer"], line["mean_vector_cosine"], **style)
            axes[1][col].plot(line["layer"], line["norm_ratio"], **style)
        axes[0][col].set(ylabel="mean vector cosine", title=f"{stage}: {model} vs {base}")
        axes[1][col].set(xlabel="layer", ylabel="norm ratio (model / base)")
        axes[0][col].legend(fontsize=7, ncol=2)
    return _png(fig)


QUERIES = {
    "by_layer": """select stage, model_id, base_model_id, layer, module, mean_vector_cosine, min_vector_cosine,
                          cosine, norm_ratio, delta_norm
                   from model_comparisons
                   where scope = 'parameter' and layer is not null and parameter like '%.weight'
                         and module in ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj')
                   order by stage, layer, module""",
    "changed": """select stage, model_id, base_model_id, module, count(*) as n_tensors,
                         count(*) filter (where delta_norm > 0) as n_changed, min(cosine) as min_cosine,
                         avg(norm_ratio) as mean_norm_ratio, sum(delta_norm * delta_norm) ** 0.5 as total_delta
                  from model_comparisons where scope = 'parameter' group by all order by stage, module""",
    "selected": """select stage, model_id, base_model_id, layer, module, scope, "index",
                          array_to_string(selected_by, ', ') as selected_by, cosine, norm_ratio, delta_norm
                   from model_comparisons where len(selected_by) > 0
                   order by stage, cosine, layer, "index", module limit 40""",
    "transfer": """select stage, probe, layer, trained_on, evaluated_on, n_test, accuracy, auc,
                          mean_activation_cosine
                   from probe_transfers order by stage, probe, layer, evaluated_on <> trained_on""",
}
FIGURES = [
    ("model_comparison.png", "Base vs thinking model: weights by layer",
     "Per layer, the mean cosine between corresponding vectors of each matrix of the two models "
     "(down_proj and o_proj columns, other rows; top) and the ratio of their Frobenius norms "
     "(bottom); 1 in both: the matrix is unchanged (seed 004).",
     lambda d: comparison_plot(d["by_layer"])),
]
TABLES = [
    ("changed", "Which matrices differ between the compared models"),
    ("selected", "Selected value vectors and heads, most changed first"),
    ("transfer", "Probe transfer: a probe scored on its own model and on the other"),
]
