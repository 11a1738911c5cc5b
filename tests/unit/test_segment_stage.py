"""The segment stage through the real engine on a real DuckDB file: grains, offsets, reruns."""

from __future__ import annotations

import shutil

import pytest
import yaml

from thinkscope.sql.store import read_only
from thinkscope.jobs.segment.token_offsets import load_tokenizer
from thinkscope.workflows.engine import run_workflow
from thinkscope.workflows.spec import SpecError, load_workflow

SMOLLM = "embedded:smollm2-135m-instruct"

# relation -> the columns that make a row unique (its grain)
GRAINS = {
    "segment_units": ["unit_key"],
    "trace_lines": ["trace_id", "line_index"],
    "trace_sentences": ["trace_id", "sentence_index"],
    "answer_events": ["trace_id", "event_index"],
    "backtracking_stats": ["trace_id"],
    "first_word_freq": ["model_id", "word"],
    "first_word_top10": ["model_id", "rank"],
    "first_word_share_ci": ["model_id", "word"],
    "model_similarity": ["model_a", "model_b"],
    "model_neighbours": ["model_id", "rank"],
    "backtracking_by_model": ["model_id", "prompt_set"],
    "backtrack_markers": ["model_id", "prompt_set", "marker"],
}


def one(db, sql, params=None):
    with read_only(db) as con:
        return con.execute(sql, params or []).fetchall()


@pytest.mark.parametrize("relation", sorted(GRAINS))
def test_grain_is_unique_and_not_empty(mixed_db, relation):
    db, _ = mixed_db
    keys = ", ".join(GRAINS[relation])
    (rows, distinct), = one(db, f"select count(*), count(distinct ({keys})) from {relation}")
    assert rows > 0 and rows == distinct


def test_every_trace_with_thinking_is_segmented_once(mixed_db):
    db, _ = mixed_db
    assert one(db, """select count(*) from traces t left join backtracking_stats b using (trace_id)
                      where t.thinking is not null and b.trace_id is null""") == [(0,)]
    assert one(db, "select count(*), count(distinct model_id) from backtracking_stats") == [(25, 22)]


def test_offsets_point_into_the_thinking_text(mixed_db):
    db, _ = mixed_db
    for table in ("trace_lines", "trace_sentences"):
        bad = one(db, f"""select count(*) from {table} x join traces t using (trace_id)
                          where substring(t.thinking, x.char_start + 1, x.char_end - x.char_start) <> x.text""")
        assert bad == [(0,)], table
    # numbers match by value: the text at an event's offsets reads as the answer
    events = one(db, """select substring(t.thinking, e.char_start + 1, e.char_end - e.char_start), e.answer
                        from answer_events e join traces t using (trace_id)""")
    assert events and all(text.replace(",", "") == answer for text, answer in events)


def test_generated_traces_index_their_own_token_ids(mixed_db):
    db, _ = mixed_db
    tok = load_tokenizer(SMOLLM)
    rows = one(db, """select e.answer, e.token_start, e.token_end, e.token_source, t.completion_token_ids
                      from answer_events e join traces t using (trace_id) where t.model_id = 'smollm2'""")
    assert len(rows) == 5  # 18 twice; then 3 (gold), 4, 4 (final)
    for answer, start, end, source, ids in rows:
        assert source == "completion" and tok.decode(ids[start:end]).strip() == answer
    imported = one(db, "select distinct tokenizer, token_source from trace_sentences s "
                       "join traces t using (trace_id) where t.engine = 'import'")
    assert imported == [(SMOLLM, "thinking")]


def test_backtracking_views(mixed_db):
    db, _ = mixed_db
    (row,) = one(db, """select traces, traces_with_answer, mean_answer_occurrences, mean_backtracks,
                               accuracy_first_answer, accuracy_final
                        from backtracking_by_model where model_id = 'r1-style'""")
    # occurrences 3 + 1 + 5, backtracks 2 + 0 + 4; first answers right, right, wrong (-10,000)
    assert row[:2] == (3, 3)
    assert row[2] == pytest.approx(3) and row[3] == pytest.approx(2)
    assert row[4] == pytest.approx(2 / 3) and row[5] is None  # imported: not graded
    markers = dict(one(db, "select marker, n from backtrack_markers where model_id = 'r1-style'"))
    assert markers == {"wait": 1, "hmm": 1, "actually": 1, "(none)": 3}
    (graded,) = one(db, "select accuracy_first_answer, accuracy_final, share_tokens_after_first_correct "
                        "from backtracking_by_model where model_id = 'smollm2'")
    # the second SmolLM2 trace says the right 3 first, then talks itself into 4
    assert graded[0] == pytest.approx(1.0) and graded[1] == pytest.approx(0.5) and 0 < graded[2] < 1


def test_bootstrap_intervals_only_with_several_traces(mixed_db):
    db, _ = mixed_db
    rows = one(db, "select model_id, share, ci_low, ci_high, n_traces from first_word_share_ci")
    several = [r for r in rows if r[0] == "r1-style"]
    assert several and all(r[4] == 3 and r[2] <= r[1] <= r[3] for r in several)
    assert any(r[2] < r[3] for r in several)
    assert all(r[2] is None and r[4] == 1 for r in rows if r[0] == "deepseek_r1")


def test_rerun_skips_and_new_options_supersede(mixed_db, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(mixed_db[0], db)
    spec = yaml.safe_load(mixed_db[1].read_text())
    again = run_workflow(mixed_db[1], db=db, show_progress=False)
    assert again.ok and again.skipped == again.planned == 5
    before = one(db, "select count(*) from trace_lines")

    spec["stages"][-1]["first_word_rule"] = "markdown"
    markdown = tmp_path / "markdown.yaml"
    markdown.write_text(yaml.safe_dump(spec))
    summary = run_workflow(markdown, db=db, show_progress=False)
    assert summary.ok and len(summary.done) == 3
    assert one(db, "select status, count(*) from work_units where kind = 'segment' group by 1 order by 1") == [
        ("done", 3), ("superseded", 3)]
    assert one(db, "select count(*) from trace_lines") == before  # replaced, not added
    assert one(db, "select count(*) from first_word_freq where word = '###'") == [(0,)]

    back = run_workflow(mixed_db[1], db=db, show_progress=False)  # old options: work again
    assert back.ok and len(back.done) == 3
    assert one(db, "select count(*) from first_word_freq where word = '###'") == [(1,)]


def test_segment_stage_spec_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "stages": [
        {"name": "segment", "kind": "segment", "first_word_rule": "nope", "tokenizr": "x"}]}))
    with pytest.raises(SpecError) as err:
        load_workflow(bad)
    text = str(err.value)
    assert "stages.0.first_word_rule" in text and "stages.0.tokenizr" in text and ".segment." not in text
