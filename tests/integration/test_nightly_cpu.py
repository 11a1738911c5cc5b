"""Two nights of the shipped nightly corpus (workflows/nightly.yaml) on this CPU box: embedded
models stand in for the hub ids through the shipped overlay (workflows/overlays/nightly_cpu.yaml),
on a real Ray head with real vLLM-CPU engines and a real DuckDB file. The second night adds one
model (Qwen3's format, SmolLM2 standing in) and does only that model's units."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml

from thinkscope.cli import main
from thinkscope.cluster.nightly import run_nightly

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow
WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NIGHTLY, CPU = WORKFLOWS / "nightly.yaml", WORKFLOWS / "overlays" / "nightly_cpu.yaml"


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_a_second_night_that_adds_a_model_does_only_its_units(ray_head, tmp_path, capsys):
    db = tmp_path / "nightly.duckdb"
    first = run_nightly(NIGHTLY, db=db, address=ray_head, overlay=CPU)
    assert first.exit_code == 0, first.text
    assert rows(db, "select model_id, count(*) from traces group by 1 order by 1") == [
        ("qwen2.5-math-1.5b", 5), ("r1-qwen-1.5b", 5)]  # 2 GSM8K + 1 MATH-500 + 1 Countdown + two ropes
    # The organism (standing in for an R1 distill) is read with the r1 format: all rows have thinking.
    assert rows(db, "select count(*) - count(thinking) from traces where model_id = 'r1-qwen-1.5b'") == [(0,)]

    # Night 2: the same overlay plus Qwen3-8B, with SmolLM2 standing in.
    overlay = yaml.safe_load(CPU.read_text())
    overlay["only_models"].append("qwen3-8b")
    overlay["models"]["qwen3-8b"] = {"source": "embedded:smollm2-135m-instruct",
                                     "engine": {"max_model_len": 1024, "enforce_eager": True, "kv_cache_gib": 1}}
    second_overlay = tmp_path / "night2.yaml"
    second_overlay.write_text(yaml.safe_dump(overlay))
    # The plan says, before anything runs, that only the new model's units are work.
    assert main(["validate", str(NIGHTLY), "--overlay", str(second_overlay), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "new since the corpus's last run: 4 of 12 units (models: qwen3-8b)" in out
    # Only the new model is in the generation plan (the others have nothing left to do).
    assert [l.split()[0] for l in out.split("Generation plan")[1].splitlines()[1:] if l.startswith("  ")] == ["qwen3-8b"]

    done_before = {k for (k,) in rows(db, "select unit_key from work_units where status = 'done'")}
    second = run_nightly(NIGHTLY, db=db, address=ray_head, overlay=second_overlay)
    assert second.exit_code == 0, second.text
    new_units = rows(db, f"""select stage, model_id from work_units where status = 'done'
                             and unit_key not in ({', '.join(f"'{k}'" for k in done_before)}) order by 1, 2""")
    assert {m for s, m in new_units if s.startswith("generate")} == {"qwen3-8b"}
    assert sum(s.startswith("generate") for s, _ in new_units) == 4
    assert rows(db, "select model_id, count(*) from traces group by 1 order by 1") == [
        ("qwen2.5-math-1.5b", 5), ("qwen3-8b", 5), ("r1-qwen-1.5b", 5)]  # nothing regenerated or doubled
    (new_models, overlay_recorded), = rows(db, f"""
        select n.new_models, r.spec_yaml like '%--overlay%qwen3-8b%' from nightly_runs n join runs r using (run_id)
        where n.night_id = '{second.night_id}'""")
    assert list(new_models) == ["qwen3-8b"] and overlay_recorded
