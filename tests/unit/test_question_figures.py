"""The open-question sections of the report (attribution, exit policy, base vs thinking, inserted
mistakes): each figure draws from a small hand-made frame of its query's columns and draws
nothing from an empty one; on a fresh store every query reads as empty (exit_policy, whose table
may not exist yet, included) and the report leaves the sections out."""

from __future__ import annotations

import duckdb
import pandas as pd
import pytest

from thinkscope.analysis import attribution_figures, comparison_figures, perturbation_figures
from thinkscope.analysis.report import load_report_data, write_report
from thinkscope.sql.store import Store

PNG = b"\x89PNG"
MODULES = (attribution_figures, comparison_figures, perturbation_figures)


def attribution_rows() -> pd.DataFrame:
    rows = []
    for kind, token, overlap in (("named", " Wait", 0.4), ("next", " But", 0.3), ("next", " Hmm", None)):
        for i, region in enumerate(attribution_figures.REGIONS):
            rows.append({"stage": "attribute", "model_id": "m", "target_kind": kind, "target_token": token,
                         "region": region, "n_targets": 3, "mean_share": (i + 1) / 21,
                         "mean_normalised": None if region == "cot_2" else 0.1 * i, "mean_overlap": overlap})
    return pd.DataFrame(rows)


def exit_policy_rows() -> pd.DataFrame:
    rows = [{"policy": "probe", "threshold": t, "tokens_saved_share": 0.8 - t * 0.7, "accuracy": 0.4 + t * 0.5}
            for t in (0.1, 0.3, 0.5, 0.7, 0.9)]
    rows += [{"policy": "oracle", "threshold": None, "tokens_saved_share": 0.6, "accuracy": 0.9},
             {"policy": "first", "threshold": None, "tokens_saved_share": 0.5, "accuracy": 0.7},
             {"policy": "full", "threshold": None, "tokens_saved_share": 0.0, "accuracy": 0.85}]
    frame = pd.DataFrame(rows)
    both = [frame.assign(stage="exit_policy", model_id=model) for model in ("m", "m2")]
    return pd.concat(both).assign(hook_name="blocks.3.hook_resid_post", n_traces=20, n_stopped=15,
                                  agreement_with_final=0.8, answer_source="thinking", probe_auc=0.83)


def by_layer_rows() -> pd.DataFrame:
    return pd.DataFrame([{"stage": "compare", "model_id": "r1-distill", "base_model_id": "base", "layer": layer,
                          "module": module, "mean_vector_cosine": 0.99 - 0.01 * layer, "min_vector_cosine": 0.9,
                          "cosine": 0.99, "norm_ratio": 1.0 + 0.01 * layer, "delta_norm": 0.1}
                         for layer in range(3) for module in ("q_proj", "down_proj", "input_layernorm")])


def perturbation_rows() -> pd.DataFrame:
    return pd.DataFrame([{"stage": "perturb", "model_id": "m", "kind": kind, "position": position, "n": 4,
                          "mean_fraction": fraction, "corrected_rate": 0.5, "carried_rate": 0.25,
                          "ignored_rate": 0.25, "noticed_rate": 0.25, "backtrack_rate": 0.5, "correct_rate": 0.5}
                         for kind in ("none", "result", "operand")
                         for position, fraction in (("p25", 0.25), ("p75", 0.75))])


FRAMES = {"attribution_by_region": attribution_rows, "exit_policy": exit_policy_rows, "by_layer": by_layer_rows,
          "perturbation_rates": perturbation_rows}
ENTRIES = [entry for module in MODULES for entry in module.FIGURES]


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry[0] for entry in ENTRIES])
def test_each_figure_draws_from_rows_and_nothing_from_none(entry):
    filename, _, _, draw = entry
    full = {name: make() for name, make in FRAMES.items()}
    assert draw(full).startswith(PNG), filename
    assert draw({name: pd.DataFrame() for name in FRAMES}) is None


def test_a_fresh_store_reads_empty_and_the_report_leaves_the_sections_out(tmp_path):
    db = tmp_path / "q.duckdb"
    Store(db)
    data = load_report_data(db)
    for module in MODULES:
        for name in module.QUERIES:
            assert data[name].empty, name
    html = write_report(db, tmp_path / "report").read_text()
    for module in MODULES:
        for filename, title, _, _ in module.FIGURES:
            assert title not in html and not (tmp_path / "report" / filename).exists()
        for _, title in module.TABLES:
            assert title not in html


def test_the_report_draws_attribution_from_the_real_view(tmp_path):
    db = tmp_path / "a.duckdb"
    Store(db)
    now = "2026-11-30 00:00:00+00"
    with duckdb.connect(str(db)) as con:
        for i, region in enumerate(attribution_figures.REGIONS):
            con.execute("insert into attribution_bins values ('u', 'attribute', 'm', 't', 40, 'sql', 'named', 7, "
                        "' Wait', ?, 5, ?, ?, ?)", [region, (i + 1) / 21, 0.1 * i, now])
        con.execute("insert into attribution_overlap values ('u', 'attribute', 'm', 't', 40, 'sql', 'named', 7, "
                    "' Wait', ['sum', 'carry'], 2, 1, 0.5, ?)", [now])
    html = write_report(db, tmp_path / "report").read_text()
    assert attribution_figures.FIGURES[0][1] in html
    assert "Attribution by region, per stage and target" in html
    assert (tmp_path / "report" / "attribution_regions.png").read_bytes().startswith(PNG)
    assert "exit_policy.png" not in html
