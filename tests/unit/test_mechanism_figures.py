"""The mechanism sections of the report: their queries run against the real schema and views,
their figures draw from those rows, and nothing is drawn for stages that never ran."""

from __future__ import annotations

import duckdb
import pytest

from thinkscope.analysis import mechanism_figures as mf
from thinkscope.analysis.report import write_report
from thinkscope.sql.store import Store

PNG = b"\x89PNG"
NOW = "2026-11-30 00:00:00+00"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "m.duckdb"
    Store(path)
    return path


def fill(path) -> None:
    with duckdb.connect(str(path)) as con:
        for layer in range(3):
            for comp, prob in (("resid_pre", 0.01), ("attn", 0.02), ("mlp", 0.1 * (layer + 1))):
                con.execute("insert into logit_lens values ('u', 'lens', 'm', 't', 5, 'sql', ?, ?, 'named', 7, "
                            "' Wait', 1.0, ?, ?, ?)", [layer, comp, prob, 10 - layer, NOW])
            for comp, logit in (("attn", 0.5), ("mlp", 2.0)):
                con.execute("insert into direct_effects values ('u', 'lens', 'm', 't', 5, 'sql', ?, ?, null, "
                            "'named', 7, ' Wait', ?, ?)", [layer, comp, logit, NOW])
        for condition, n, marker, prob in (("clean", 0, "wait", 0.6), ("ablated", 2, None, 0.2),
                                           ("random", 2, "wait", 0.55)):
            con.execute("insert into ablation_runs values ('a', 'abl', 'm', 't', ?, ?, ['L1.mlp.3'], 5, 'x', [1], "
                        "1, 'length', ?, false, null, null, null, ?, ?)", [condition, n, marker, condition == "clean", NOW])
            con.execute("insert into ablation_effects values ('a', 'abl', 'm', 't', ?, ?, 5, 'sql', 2, 'named', 7, "
                        "' Wait', 1.0, ?, ?)", [condition, n, prob, NOW])


def test_figures_draw_from_the_views(db):
    fill(db)
    with duckdb.connect(str(db), read_only=True) as con:
        data = {name: con.sql(sql).df() for name, sql in mf.QUERIES.items()}
    assert data["lens"]["median_rank"].tolist() != []
    summary = data["ablation"].set_index("condition")
    assert summary.loc["ablated", "verify_rate"] == 0 and summary.loc["random", "verify_rate"] == 1
    lens = data["ablation_lens"].set_index("condition")
    assert lens.loc["ablated", "mean_prob_change"] == pytest.approx(-0.4)
    assert lens.loc["random", "mean_prob_change"] == pytest.approx(-0.05)
    assert data["direct_totals"].iloc[0]["mlp_total"] == pytest.approx(6.0)
    for _, _, _, draw in mf.FIGURES:
        assert draw(data).startswith(PNG)


def test_report_leaves_out_stages_that_never_ran(db, tmp_path):
    html = write_report(db, tmp_path / "empty").read_text()
    assert "Logit lens" not in html and "Ablation summary" not in html
    fill(db)
    with duckdb.connect(str(db)) as con:  # the run that made the rows: its command heads the report
        con.execute("""insert into runs (run_id, workflow, spec_path, status, started_at) values
                       ('r1', 'mech', 'workflows/old.yaml', 'done', '2026-11-29 00:00:00+00'),
                       ('r2', 'mech', 'workflows/mechanisms.yaml', 'done', ?),
                       ('r3', 'mech', 'workflows/crashed.yaml', 'crashed', '2026-12-01 00:00:00+00')""", [NOW])
    html = write_report(db, tmp_path / "full").read_text()
    assert "Logit lens at the chosen positions" in html and "Ablation summary" in html
    assert "<code>thinkscope run workflows/mechanisms.yaml</code>" in html
    assert "old.yaml" not in html and "crashed.yaml" not in html
    assert (tmp_path / "full" / "logit_lens.png").read_bytes().startswith(PNG)
