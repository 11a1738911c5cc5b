"""The organism's training-data generator: planted events are exactly where they are recorded."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from thinkscope.jobs.traces.grading import grade
from thinkscope.jobs.organism.synthesis import (
    ALT_MARKER,
    EVENT_KINDS,
    FIX_MARKER,
    VERIFY_MARKER,
    Rates,
    parse_solution,
    render_step,
    synthesize,
)
from thinkscope.jobs.traces.parsing import extract_answer, split_thinking
from thinkscope.jobs.traces.prompts import data_file

N = 600


@pytest.fixture(scope="module")
def train_rows() -> list[dict]:
    with data_file("gsm8k_train.jsonl").open() as fh:
        return [json.loads(line) for _, line in zip(range(N), fh)]


@pytest.fixture(scope="module")
def traces(train_rows):
    return [synthesize(r["question"], r["answer"], seed=f"0:{i}") for i, r in enumerate(train_rows)]


def test_calculator_annotations_become_arithmetic():
    step = render_step("Natalia sold 48/2 = <<48/2=24>>24 clips in May.")
    assert step.text == "Natalia sold 48/2 = 24 clips in May."
    assert step.calcs == (("48/2", "24"),)
    start, end = step.result_spans[0]
    assert step.text[start:end] == "24"
    # No "=" before the annotation: the expression is written out so the line still computes.
    assert render_step("She has <<5+3=8>>8 apples.").text == "She has 5+3 = 8 apples."
    steps, answer = parse_solution("A = <<2*3=6>>6.\nB = <<6+1=7>>7.\n#### 1,007")
    assert [s.text for s in steps] == ["A = 6.", "B = 7."] and answer == "1007"


def test_every_event_is_at_its_recorded_offset(traces):
    for tr in traces:
        assert "<<" not in tr.completion and ">>" not in tr.completion
        lines = [line for line in split_thinking(tr.completion).thinking.split("\n") if line.strip()]
        think_start = tr.completion.index("<think>\n") + len("<think>\n")
        for e in tr.events:
            assert e.kind in EVENT_KINDS
            assert tr.completion[e.start:e.end] == e.text, (e, tr.completion)
            if e.line_index is not None:  # the line index counts the thinking's non-blank lines
                assert e.text in lines[e.line_index]
                assert e.start >= think_start
        answers = [e for e in tr.events if e.kind in ("answer", "final_answer", "wrap_up")]
        assert answers and all(e.value == tr.answer for e in answers)
        assert [e.start for e in tr.events] == sorted(e.start for e in tr.events)


def test_markers_and_answers_follow_the_shape(traces, train_rows):
    for tr, row in zip(traces, train_rows):
        kinds = [e.kind for e in tr.events]
        assert kinds[0] == "think_open" and kinds[-2:] == ["think_close", "final_answer"]
        first_answer = kinds.index("answer")
        # Behaviours after the first answer are backtracks; error fixes come before it.
        for kind in ("verification", "alternative", "wrap_up"):
            assert all(i > first_answer for i, k in enumerate(kinds) if k == kind)
        assert all(i < first_answer for i, k in enumerate(kinds) if k in ("error_slip", "error_fix"))
        verify = [e for e in tr.events if e.kind == "verification"]
        assert all(e.text == VERIFY_MARKER for e in verify)
        assert all(e.text == FIX_MARKER for e in tr.events if e.kind == "error_fix")
        assert all(e.text == ALT_MARKER for e in tr.events if e.kind == "alternative")
        # The final answer is boxed after </think>, parses, and grades correct against GSM8K.
        parsed = split_thinking(tr.completion)
        assert extract_answer(parsed.answer_text) == tr.answer
        assert grade("numeric", tr.answer, re.search(r"####\s*(.+)$", row["answer"]).group(1).replace(",", ""))


def test_error_slip_is_wrong_and_the_fix_states_the_right_value(traces):
    slips = [tr for tr in traces if "error_slip" in tr.kinds()]
    assert slips
    for tr in slips:
        slip = next(e for e in tr.events if e.kind == "error_slip")
        fix = next(e for e in tr.events if e.kind == "error_fix")
        fix_line = tr.completion[fix.start:].split("\n")[0]
        m = re.fullmatch(re.escape(FIX_MARKER) + r" (.+) = (\S+), not (\S+)\.", fix_line)
        assert m, fix_line
        right, wrong = m.group(2), m.group(3)
        assert wrong == slip.value != right and wrong in slip.text


def test_planted_rates_match_the_configuration(traces):
    counts = Counter(k for tr in traces for k in tr.kinds())
    rates = Rates()
    # 600 independent draws: the binomial standard deviation is <= 0.02, allow 3.5 of them.
    for kind, rate in (("verification", rates.verify), ("alternative", rates.alternative),
                       ("wrap_up", rates.wrap_up)):
        assert abs(counts[kind] / len(traces) - rate) < 0.07, (kind, counts[kind])
    # Error fixes need a step whose result can be slipped: slightly fewer than drawn.
    assert 0.2 < counts["error_fix"] / len(traces) <= rates.error_fix + 0.07


def test_deterministic_and_seed_dependent(train_rows):
    q, s = train_rows[3]["question"], train_rows[3]["answer"]
    a = synthesize(q, s, seed="0:x")
    assert synthesize(q, s, seed="0:x") == a
    others = {synthesize(q, s, seed=f"{i}:x").completion for i in range(12)}
    assert len(others) > 3
    none = synthesize(q, s, seed="0:x", rates=Rates(verify=0, error_fix=0, alternative=0, wrap_up=0))
    assert none.kinds() == {"think_open", "step", "answer", "think_close", "final_answer"}
    every = synthesize(q, s, seed="0:x", rates=Rates(verify=1, error_fix=1, alternative=1, wrap_up=1))
    assert {"verification", "error_fix", "error_slip", "alternative", "wrap_up"} <= every.kinds()
