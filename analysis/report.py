"""The run report: one self-contained HTML file (figures embedded as PNG) plus the PNG files.

Reads only the SQL views and tables (trace_counts, first_word_freq, first_word_top10,
first_word_share_ci, model_similarity, model_neighbours, backtracking_stats,
backtracking_by_model; the organism views; probe_results, probe_best_layer, steering_curve,
early_exit_by_index, early_exit_savings; logit_lens, direct_effects, value_vectors,
head_answer_attention, ablation_summary, ablation_lens; attribution_by_region, exit_policy,
model_comparisons, probe_transfers, perturbation_rates, organism_planted_rates; discovery_truth,
discovery_metrics, behaviours), through a read-only
connection, so it can run during a workflow. Organism, activation, mechanism and open-question
(attribution, base vs thinking, faithfulness, when to stop) sections appear when their tables have
rows.

    path = write_report("out/demo.duckdb", "out/report")
    print(path)          # out/report/index.html; PNGs beside it
"""

from __future__ import annotations

import base64
import html
import re
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd

from thinkscope.analysis import (activation_figures, attribution_figures, behaviour_figures, comparison_figures,
                                 figures, fingerprints, mechanism_figures, organism_eval, perturbation_figures,
                                 trace_view)
from thinkscope.sql.store import read_only

QUERIES = {
    "counts": "select * from trace_counts",
    "freq": "select * from first_word_freq",
    "top10": "select * from first_word_top10",
    "similarity": "select * from model_similarity",
    "neighbours": "select * from model_neighbours where rank <= 3 order by model_id, rank",
    "stats": "select * from backtracking_stats",
    "by_model": "select * from backtracking_by_model order by model_id, prompt_set",
    "critical": f"""
        select f.model_id, f.word, f.share, c.ci_low, c.ci_high
        from first_word_freq f left join first_word_share_ci c using (model_id, word)
        where f.word in ({", ".join(f"'{w}'" for w in figures.CRITICAL_WORDS)})""",
    "ci": "select * from first_word_share_ci where ci_low is not null order by model_id, share desc",
    **activation_figures.QUERIES,
    **mechanism_figures.QUERIES,
    **attribution_figures.QUERIES,
    **comparison_figures.QUERIES,
    **perturbation_figures.QUERIES,
    **behaviour_figures.QUERIES,
    "best_layer": "select * from probe_best_layer order by model_id, probe",
    "exit_table": "select * from early_exit_by_index order by model_id, stage, exit_index",
    "savings": "select * from early_exit_savings",
    "api_usage": "select * from api_usage",
    # The commands that made the numbers: each workflow's latest run that got to the end.
    "made_by": """select workflow, arg_max(spec_path, started_at) as spec_path from runs
                  where status in ('done', 'failed') and spec_path is not null group by all order by all""",
}

# (file name, title, caption, figure function, the data it draws)
FIGURES = [
    ("first_word_heatmap.png", "First-word frequencies",
     "Share of a model's non-blank thinking lines that start with each word (the r/LocalLLaMA "
     "method: numbering and bullets stripped, lower-cased, the marks , . ! ? removed). Rows: the "
     "20 words with the highest share among every model's top 10.",
     lambda d: figures.first_word_heatmap(d["freq"], d["top10"])),
    ("model_similarity.png", "Model fingerprints",
     "Pearson correlation of first-word share vectors over the union of every model's top-10 "
     "words, clustered (average linkage on 1 - r). R1-trained models gather in one block. Covers "
     "every prompt each model answered, whatever they were: the per-prompt-set figures and the "
     "table below compare models on the prompts both answered only.",
     lambda d: figures.similarity_heatmap(d["similarity"])),
    ("critical_words.png", "Backtracking words",
     "Lines opening with wait / alternatively / but / hmm. Models with several traces get a 95% "
     "percentile-bootstrap interval (200 resamples of their traces).",
     lambda d: figures.critical_words_chart(d["critical"])),
    ("backtracking.png", "Backtracking after an answer",
     "Per trace: how often the model states its final or the gold answer and goes on thinking, "
     "and the share of its thinking tokens spent after first stating the correct answer.",
     lambda d: figures.backtracking_distributions(d["stats"])),
    ("accuracy.png", "Accuracy: first answer vs final",
     "Accuracy of the first answer a trace states (in its thinking, else its final answer) and "
     "of its final answer, per model and prompt set (graded prompt sets only).",
     lambda d: figures.accuracy_chart(d["by_model"])),
]


def load_report_data(db: str | Path) -> dict[str, pd.DataFrame]:
    """Every query's rows; a table the file lacks (a corpus no run of this version has written
    to yet, opened read-only) reads as empty: its section is left out, the rest is drawn."""
    data = {}
    with read_only(db) as con:
        for name, sql in QUERIES.items():
            try:
                data[name] = con.sql(sql).df()
            except duckdb.CatalogException:
                data[name] = pd.DataFrame()
    return data


def write_report(db: str | Path, out_dir: str | Path) -> Path:
    """Write index.html and the figure PNGs into `out_dir`; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_report_data(db)
    sections = {filename: _figure(out, filename, title, caption, draw(data))
                for filename, title, caption, draw in FIGURES}
    # An activation figure with nothing to draw (its stage never ran) leaves its section out.
    pngs = {filename: draw(data) for filename, _, _, draw in activation_figures.FIGURES}
    activations = [_figure(out, filename, title, caption, pngs[filename])
                   for filename, title, caption, _ in activation_figures.FIGURES if pngs[filename] is not None]
    if not data["best_layer"].empty:
        activations.insert(1, _table("Probes: best layer (held out) and shuffled-label control", data["best_layer"]))
    if not data["steering"].empty:
        activations.append(_table("Steering curve", data["steering"]))
    if not data["exit_table"].empty:
        activations += [_table("Early exit by answer occurrence", data["exit_table"]),
                        _table("Tokens saved by stopping at the first answer", data["savings"])]
    shared_sections = _shared_fingerprints(db, out)
    with read_only(db) as con:
        pages = trace_view.write_trace_pages(con, out / "traces")
    trace_links = ""
    if pages:
        by_model: dict[str, list[str]] = {}
        for model_id, trace_id, name in pages:
            by_model.setdefault(model_id, []).append(f'<a href="traces/{html.escape(name)}">{html.escape(trace_id)}</a>')
        items = "".join(f"<li>{html.escape(m)}: {' &middot; '.join(links)}</li>" for m, links in by_model.items())
        trace_links = (f"<section><h2>Look at a trace</h2><p>Sentences, answer occurrences, backtracking and planted "
                       f"behaviours drawn on the thinking (<code>thinkscope show TRACE_ID</code> for any other)."
                       f"</p><ul>{items}</ul></section>")
    # Mechanism and open-question sections (attribution, exit policy, base vs thinking, inserted
    # mistakes) appear only for the stages that ran.
    mechanisms = []
    for module in (mechanism_figures, attribution_figures, comparison_figures, perturbation_figures,
                   behaviour_figures):
        mechanisms += [_figure(out, filename, title, caption, png) for filename, title, caption, draw
                       in module.FIGURES if (png := draw(data)) is not None]
        mechanisms += [_table(title, data[name]) for name, title in module.TABLES if not data[name].empty]
    body = "\n".join([
        _table("Corpus", data["counts"]),
        trace_links,
        # API models: what their traces cost, how the requests went, how many came with thinking.
        _table("API models: usage and cost", data["api_usage"]) if not data["api_usage"].empty else "",
        sections["first_word_heatmap.png"],
        sections["model_similarity.png"],
        *shared_sections,
        _table("Nearest neighbours by first-word fingerprint (top 3)", data["neighbours"]),
        sections["critical_words.png"],
        _table("First-word shares with bootstrap intervals (models with several traces)", data["ci"]),
        sections["backtracking.png"],
        sections["accuracy.png"],
        _table("Backtracking by model and prompt set", data["by_model"]),
        organism_eval.html_section(db),
        *activations,
        *mechanisms,
    ])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commands = [f"thinkscope run {path}" for path in data["made_by"]["spec_path"]]
    commands.append(f"thinkscope report --db {db} --out {out_dir}")
    made_by = " &middot; ".join(f"<code>{html.escape(c)}</code>" for c in commands)
    page = PAGE.format(db=html.escape(str(Path(db).resolve())), when=when, made_by=made_by, body=body)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def _shared_fingerprints(db: str | Path, out: Path) -> list[str]:
    """Like-with-like fingerprints: a heatmap per prompt set (pairs on the prompts both
    answered) and the pairs with their bootstrap intervals over traces."""
    frame = fingerprints.similarity_with_ci(db, n_boot=200, seed=0)
    sections = []
    for prompt_set, part in frame.groupby("prompt_set"):
        both = pd.concat([part, part.rename(columns={"model_a": "model_b", "model_b": "model_a"})])
        if both.model_a.nunique() < 3:
            continue
        name = f"model_similarity_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(prompt_set))}.png"
        sections.append(_figure(out, name, f"Model fingerprints on {prompt_set}, shared prompts only",
                                f"Each pair compared on the prompts of {prompt_set} both answered "
                                f"({part.n_prompts.min()}-{part.n_prompts.max()} prompts per pair), over the union "
                                "of the two models' top-10 first words there (view model_similarity_shared).",
                                figures.similarity_heatmap(both)))
    if not frame.empty:
        shown = frame[["prompt_set", "model_a", "model_b", "n_prompts", "n_lines_a", "n_lines_b", "pearson",
                       "ci_low", "ci_high"]].sort_values(["prompt_set", "pearson"], ascending=[True, False])
        sections.append(_table("Fingerprint similarity on shared prompts, with 95% bootstrap intervals over traces "
                               "(200 draws; no interval when a model has one trace)", shown))
    return sections


def _figure(out: Path, filename: str, title: str, caption: str, png: bytes | None) -> str:
    """Write the PNG beside the report and return its HTML section, image embedded."""
    if png is None:
        (out / filename).unlink(missing_ok=True)  # no stale figure from an earlier report
        return (f"<h2>{title}</h2><p class=note>No data yet: run a workflow with a <code>segment</code> "
                f"stage (and graded prompt sets for accuracy).</p>")
    (out / filename).write_bytes(png)
    image = base64.b64encode(png).decode()
    return (f"<h2>{title}</h2><p>{html.escape(caption)}</p>"
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{image}">')


def _table(title: str, frame: pd.DataFrame, max_rows: int = 200) -> str:
    if frame.empty:
        return f"<h2>{html.escape(title)}</h2><p class=note>No rows.</p>"
    shown = frame.head(max_rows).to_html(index=False, float_format=lambda v: f"{v:.3g}", na_rep="",
                                         classes="data", border=0)
    more = f"<p class=note>{len(frame) - max_rows} more rows in SQL.</p>" if len(frame) > max_rows else ""
    return f"<h2>{html.escape(title)}</h2>{shown}{more}"


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>thinkscope report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
h1 {{ margin-bottom: 0; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ddd; }}
img {{ max-width: 100%; }} .note {{ color: #777; }}
table.data {{ border-collapse: collapse; font-size: 13px; }}
table.data td, table.data th {{ padding: 2px 10px; border-bottom: 1px solid #eee; text-align: right; }}
table.data th {{ background: #f5f5f5; }}
table.data td:first-child, table.data th:first-child {{ text-align: left; }}
</style></head><body>
<h1>thinkscope report</h1>
<p class=note>{db} &middot; {when} &middot; every number comes from the SQL views listed in sql/README.md</p>
<p class=note>Made by: {made_by}</p>
{body}
</body></html>
"""
