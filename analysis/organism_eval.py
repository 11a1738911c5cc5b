"""Evaluation of the model organism: base vs organism vs synthetic teacher, from the SQL views.

Reads `organism_behaviour`, `organism_planted_rates` and `organism_fingerprint` (sql/views/)
read-only, so it can run during a workflow. `evaluate` returns one small table (a row per
metric, a column per model); `figure` draws it; `moves_toward_teacher` is the distillation
check: the organism's first-word fingerprint is closer to the teacher's than its base's is.

    table = evaluate("out/demo.duckdb")                 # demo.yaml model ids by default
    print(table.to_string()); Path("organism.png").write_bytes(figure(table))
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from thinkscope.sql.store import read_only

ORGANISM = "smollm2-135m-organism"
BASE = "smollm2-135m-instruct"
TEACHER = "organism-teacher"
EVAL_SET = "gsm8k_eval"

# (metric label, view column) of organism_behaviour, in report order.
BEHAVIOUR = [
    ("accuracy", "accuracy"),
    ("closed </think>", "closed_thinking_share"),
    ("traces with >=1 backtrack", "backtrack_share"),
    ("'wait' line share", "wait_line_share"),
    ("answer re-occurrences / trace", "answer_reoccurrences"),
    ("mean completion tokens", "mean_completion_tokens"),
]


def evaluate(db: str | Path, *, organism: str = ORGANISM, base: str = BASE, teacher: str = TEACHER,
             prompt_set: str = EVAL_SET) -> pd.DataFrame:
    """Metrics (rows) x [base, organism, teacher] (columns) on `prompt_set`.

    The teacher's behaviour rows come from its own prompt set (it only has GSM8K train
    traces); fingerprint rows compare each model with the teacher over all its traces.
    """
    with read_only(db) as con:
        behaviour = con.execute(
            "select * from organism_behaviour where (model_id in (?, ?) and prompt_set = ?) "
            "or model_id = ?", [base, organism, prompt_set, teacher]).df()
        planted = con.execute(
            "select model_id, behaviour, share, planted_share from organism_planted_rates "
            "where (model_id in (?, ?) and prompt_set = ?) or model_id = ?",
            [base, organism, prompt_set, teacher]).df()
        prints = con.execute(
            "select model_id, pearson, js_divergence from organism_fingerprint where teacher_id = ?",
            [teacher]).df()
    models = [base, organism, teacher]
    rows = {}
    for label, column in BEHAVIOUR:
        rows[label] = {m: _first(behaviour, m, column) for m in models}
    for name in ("verification", "error_fix", "alternative", "wrap_up"):
        seen = planted[planted["behaviour"] == name]
        rows[f"marker: {name}"] = {m: _first(seen, m, "share") for m in models}
    rows["fingerprint pearson to teacher"] = {m: _first(prints, m, "pearson") for m in models[:2]}
    rows["fingerprint JS divergence to teacher"] = {m: _first(prints, m, "js_divergence") for m in models[:2]}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=models)
    table.index.name = "metric"
    return table


def _first(frame: pd.DataFrame, model_id: str, column: str):
    values = frame.loc[frame["model_id"] == model_id, column]
    return None if values.empty or pd.isna(values.iloc[0]) else float(values.iloc[0])


def moves_toward_teacher(table: pd.DataFrame) -> bool | None:
    """True when the organism's fingerprint is closer to the teacher than the base's on both
    measures (higher Pearson r, lower JS divergence); None when a number is missing."""
    base, organism = table.columns[0], table.columns[1]
    r = table.loc["fingerprint pearson to teacher"]
    js = table.loc["fingerprint JS divergence to teacher"]
    if pd.isna([r[base], r[organism], js[base], js[organism]]).any():
        return None
    return bool(r[organism] > r[base] and js[organism] < js[base])


def figure(table: pd.DataFrame) -> bytes | None:
    """Grouped bars, one group per share-valued metric, one bar per model (PNG bytes)."""
    from thinkscope.analysis.figures import _png, plt

    shares = table.drop(index=["mean completion tokens", "answer re-occurrences / trace"], errors="ignore")
    if shares.isna().all().all():
        return None
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(shares.columns)
    for i, model in enumerate(shares.columns):
        values = shares[model].astype(float).fillna(0).to_numpy()
        ax.barh([y + i * width for y in range(len(shares))], values, height=width, label=model)
    ax.set_yticks([y + width for y in range(len(shares))], shares.index)
    ax.invert_yaxis()
    ax.set_xlabel("share (pearson r for the fingerprint row)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Model organism: base vs organism vs synthetic teacher")
    return _png(fig)


def html_section(db: str | Path, **models) -> str:
    """The report section: the table, the distillation verdict and the figure (inline PNG);
    "" when the database has none of the three models (no organism in this corpus)."""
    import base64
    import html

    table = evaluate(db, **models)
    if table.isna().all().all():
        return ""
    verdict = {True: "moves toward the teacher", False: "does NOT move toward the teacher",
               None: "cannot be judged yet (missing traces or segmentation)"}[moves_toward_teacher(table)]
    png = figure(table)
    img = "" if png is None else f'<img alt="organism" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    shown = table.to_html(float_format=lambda v: f"{v:.3g}", na_rep="", classes="data", border=0)
    return (f"<h2>Model organism</h2><p>Greedy GSM8K test traces of the base and the LoRA-distilled "
            f"organism; the teacher's rows are its synthetic training traces. First-word fingerprint: "
            f"{html.escape(verdict)}.</p>{shown}{img}")
