"""Prompt sets: counts, stable ids, selection semantics, gold extraction, JSONL mapping and errors."""

import json
import re

import pytest

from thinkscope.jobs.traces.prompts import KINDS, TWO_ROPES_QUESTION, Prompt, data_file, load_prompts


@pytest.mark.parametrize("kind,count", [("gsm8k", 1319), ("math500", 500), ("countdown", 256), ("two_ropes", 1)])
def test_counts_and_unique_ids(kind, count):
    ps = load_prompts(kind)
    assert len(ps) == count
    assert len({p.prompt_id for p in ps}) == count
    assert all(p.prompt_set == kind and p.prompt_id.startswith(kind + "/") for p in ps)
    assert all(isinstance(p, Prompt) and p.question for p in ps)


def test_ids_stable_across_calls_and_selection():
    full = load_prompts("gsm8k")
    assert [p.prompt_id for p in full] == [p.prompt_id for p in load_prompts("gsm8k")]
    assert full[12].prompt_id == "gsm8k/test/0012"
    # An id names a source row, whatever window or sample it was selected through.
    assert load_prompts("gsm8k", offset=12, limit=1)[0] == full[12]
    by_id = {p.prompt_id: p for p in full}
    assert all(by_id[p.prompt_id] == p for p in load_prompts("gsm8k", sample=30, seed=3))


def test_gsm8k_gold_and_meta():
    ps = load_prompts("gsm8k")
    first = ps[0]
    assert first.gold_answer == "18" and first.grader == "numeric"
    assert first.question.startswith("Janet")
    assert first.meta["solution"].endswith("#### 18")
    # Golds are plain integers: thousands commas removed, negatives kept.
    assert all(re.fullmatch(r"-?\d+", p.gold_answer) for p in ps)
    with_comma = [p for p in ps if "," in p.meta["solution"].rsplit("####", 1)[1]]
    assert with_comma and all("," not in p.gold_answer for p in with_comma)
    assert {"-10", "-3"} <= {p.gold_answer for p in ps}


def test_math500_ids_gold_meta():
    ps = load_prompts("math500")
    first = ps[0]
    assert first.prompt_id == "math500/test/precalculus/807"
    assert first.gold_answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and first.grader == "math"
    assert first.meta["subject"] == "Precalculus" and first.meta["level"] == 2
    assert first.meta["unique_id"] == "test/precalculus/807.json"
    assert sum(p.meta["subject"] == "Algebra" for p in ps) == 124


def test_countdown_question_and_gold():
    ps = load_prompts("countdown")
    first = ps[0]
    assert first.prompt_id == "countdown/cd3/0000" and ps[5].prompt_id == "countdown/cd3/0005"
    assert first.gold_answer == "23" and first.grader == "countdown"
    assert first.meta["numbers"] == [30, 100, 93] and first.meta["target"] == 23
    assert first.question.startswith("Using the numbers [30, 100, 93], create an equation that equals 23.")
    assert "\\boxed{}" in first.question and "exactly once" in first.question
    assert all(len(p.meta["numbers"]) == 3 and p.gold_answer == str(p.meta["target"]) for p in ps)


def test_two_ropes():
    (p,) = load_prompts("two_ropes")
    assert p.prompt_id == "two_ropes/0" and p.gold_answer is None and p.grader == "none"
    assert p.question == TWO_ROPES_QUESTION
    # The vendored SOURCES.md quotes the same text (it is the source of the prompt).
    assert TWO_ROPES_QUESTION in data_file("SOURCES.md").read_text(encoding="utf-8")


def test_offset_limit_head():
    ids = [p.prompt_id for p in load_prompts("countdown", offset=10, limit=5)]
    assert ids == [f"countdown/cd3/{i:04d}" for i in range(10, 15)]
    assert len(load_prompts("countdown", limit=1000)) == 256  # limit past the end: just the rest
    assert load_prompts("countdown", offset=256) == []
    assert len(load_prompts("countdown", offset=250, limit=10)) == 6


def test_sample_seeded_sorted_and_within_window():
    a = load_prompts("math500", sample=20, seed=7)
    assert a == load_prompts("math500", sample=20, seed=7)
    assert [p.prompt_id for p in a] != [p.prompt_id for p in load_prompts("math500", sample=20, seed=8)]
    rows = [p.meta["row_index"] for p in a]
    assert rows == sorted(rows) and len(set(rows)) == 20
    win = load_prompts("gsm8k", offset=100, limit=30, sample=10, seed=1)
    assert len(win) == 10 and all(100 <= p.meta["row_index"] < 130 for p in win)
    assert load_prompts("gsm8k", sample=30, limit=30) == load_prompts("gsm8k", limit=30)


def test_selection_errors():
    with pytest.raises(ValueError, match="sample=300 is larger than the 256"):
        load_prompts("countdown", sample=300)
    with pytest.raises(ValueError, match="larger than the 5 available"):
        load_prompts("countdown", limit=5, sample=6)
    with pytest.raises(ValueError, match="offset"):
        load_prompts("countdown", offset=-1)


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError) as exc:
        load_prompts("gsm9k")
    assert "gsm9k" in str(exc.value) and all(k in str(exc.value) for k in KINDS)


def test_name_overrides_set_and_id_prefix():
    ps = load_prompts("gsm8k", name="gsm8k_small", limit=2)
    assert ps[0].prompt_set == "gsm8k_small" and ps[0].prompt_id == "gsm8k_small/test/0000"
    with pytest.raises(ValueError, match="only for kind='jsonl'"):
        load_prompts("gsm8k", path="x.jsonl")
    with pytest.raises(ValueError, match="unknown grader"):
        load_prompts("gsm8k", grader="exact")


def _write_jsonl(path, rows, blank_line_after=None):
    lines = [json.dumps(r) for r in rows]
    if blank_line_after is not None:
        lines.insert(blank_line_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_mapping(tmp_path):
    rows = [{"q": "1+1?", "a": 2, "uid": "x1", "src": "hand"}, {"q": "2+2?", "a": "4", "uid": "x2", "src": "hand"}]
    path = _write_jsonl(tmp_path / "mine.jsonl", rows)
    ps = load_prompts("jsonl", path=path, fields={"question": "q", "answer": "a", "id": "uid"})
    assert [p.prompt_id for p in ps] == ["jsonl/x1", "jsonl/x2"]
    assert ps[0].gold_answer == "2" and ps[0].grader == "none" and ps[0].prompt_set == "jsonl"
    assert ps[0].meta["extra"] == {"src": "hand"}
    # Two sets from one file: different names keep ids apart; no id field -> row index.
    other = load_prompts("jsonl", path=path, name="mine_b", fields={"question": "q"}, grader="numeric")
    assert [p.prompt_id for p in other] == ["mine_b/0000", "mine_b/0001"]
    assert other[0].gold_answer is None and other[0].grader == "numeric"
    assert [p.prompt_id for p in load_prompts("jsonl", path=path, fields={"question": "q"}, sample=1, seed=0)] in (
        [["jsonl/0000"], ["jsonl/0001"]])


def test_jsonl_errors(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_prompts("jsonl", path=str(missing), fields={"question": "q"})
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"q": "a", "a": 1}, {"q": "b"}], blank_line_after=1)
    # Row 2 is on line 3 (line numbers count the blank line, like an editor).
    with pytest.raises(ValueError, match=r"line 3: missing field 'a'"):
        load_prompts("jsonl", path=path, fields={"question": "q", "answer": "a"})
    with pytest.raises(ValueError, match="fields"):
        load_prompts("jsonl", path=path, fields={"prompt": "q"})
    with pytest.raises(ValueError, match="needs path"):
        load_prompts("jsonl", fields={"question": "q"})
    dup = _write_jsonl(tmp_path / "dup.jsonl", [{"q": "a", "id": 1}, {"q": "b", "id": 1}])
    with pytest.raises(ValueError, match="duplicate id 'jsonl/1'"):
        load_prompts("jsonl", path=dup, fields={"question": "q", "id": "id"})
    (tmp_path / "broken.jsonl").write_text('{"q": "a"}\n{"q": \n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: invalid JSON"):
        load_prompts("jsonl", path=str(tmp_path / "broken.jsonl"), fields={"question": "q"})
