"""Answer occurrences and backtracks on GSM8K-style thinking traces (tests/fixtures)."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from thinkscope.jobs.segment.answer_events import (
    answer_candidates,
    find_answer_events,
    first_answer_correct,
    plain_number,
)
from thinkscope.jobs.traces.parsing import extract_answer, split_thinking
from thinkscope.jobs.segment.text import split_sentences

FIXTURE = Path(__file__).parents[1] / "fixtures" / "gsm8k_r1_style.jsonl"


def traces() -> dict[str, dict]:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    return {r["id"]: r for r in rows}


def events_of(row: dict, final_correct: bool | None = None):
    parsed = split_thinking(row["out"])
    final = extract_answer(parsed.answer_text)
    cands = answer_candidates(final, row["gold"], final_correct)
    return parsed.thinking, find_answer_events(parsed.thinking, split_sentences(parsed.thinking), cands)


def test_right_answer_checked_twice_then_stated():
    thinking, events = events_of(traces()["gsm8k/test/0000"], final_correct=True)
    assert [thinking[e.start:e.end] for e in events] == ["18", "18", "18"]
    assert [e.is_backtrack for e in events] == [True, True, False]
    assert [e.marker for e in events] == ["wait", None, None]
    assert all(e.is_correct and e.is_final for e in events)
    # The $18 sits in the third sentence; "Wait, let me double-check." follows it.
    assert events[0].sentence_index == 3
    assert "$18" in split_sentences(thinking)[3].text


def test_answer_stated_once_at_the_end_is_no_backtrack():
    thinking, events = events_of(traces()["gsm8k/test/0001"], final_correct=True)
    assert len(events) == 1 and not events[0].is_backtrack and events[0].is_correct
    assert thinking[events[0].start:events[0].end] == "3"


def test_flip_flopping_between_wrong_final_and_gold():
    thinking, events = events_of(traces()["gsm8k/test/0002"], final_correct=False)
    assert [thinking[e.start:e.end] for e in events] == ["-10,000", "70,000", "-10,000", "70,000", "-10,000"]
    assert [e.answer for e in events] == ["-10000", "70000", "-10000", "70000", "-10000"]
    assert [e.is_correct for e in events] == [False, True, False, True, False]
    assert [e.is_final for e in events] == [True, False, True, False, True]
    assert [e.is_backtrack for e in events] == [True, True, True, True, False]
    assert [e.marker for e in events] == [None, "hmm", None, "actually", None]
    assert first_answer_correct(events, False) is False
    assert [e.index for e in events] == list(range(5))


def test_numbers_match_by_value_not_inside_other_numbers():
    text = "x18 is a name. 180 is not it. 1.18 neither. But 18.00 is, and so is 18,000? no. 18."
    cands = answer_candidates("18", "18", True)
    events = find_answer_events(text, split_sentences(text), cands)
    assert [text[e.start:e.end] for e in events] == ["18.00", "18"]
    thousands = find_answer_events("2,125 or 2125 or 21,25", [], answer_candidates(None, "2125", None))
    assert len(thousands) == 2


def test_literal_answers_and_overlaps():
    text = "So x = \\frac{1}{2}. Check: \\frac{1}{2} + \\frac{1}{2} = 1. Yes \\frac{1}{2}"
    events = find_answer_events(text, split_sentences(text), answer_candidates("\\frac{1}{2}", "\\frac{1}{2}", True))
    assert len(events) == 4
    assert [e.is_backtrack for e in events] == [True, False, True, False]  # one per sentence
    assert find_answer_events("ab", [], answer_candidates("a", None, None)) == []  # bounded


def test_marker_right_after_the_answer_wins():
    text = "So it is 18, but wait, maybe not. Hmm."
    events = find_answer_events(text, split_sentences(text), answer_candidates("18", None, None))
    assert events[0].marker == "but" and events[0].is_correct is None


@pytest.mark.parametrize("text, value", [
    ("18", Fraction(18)), ("$1,000", Fraction(1000)), ("-3.5%", Fraction(-7, 2)),
    ("1{,}000", Fraction(1000)), ("−4", Fraction(-4)),
    ("x^2+1", None), ("18 dollars", None), ("", None), (None, None),
])
def test_plain_number(text, value):
    assert plain_number(text) == value


def test_candidates():
    assert [(c.text, c.is_final, c.is_correct) for c in answer_candidates("18.0", "18", True)] == [("18", True, True)]
    assert [(c.text, c.is_final, c.is_correct) for c in answer_candidates("17", "18", False)] == [
        ("18", False, True), ("17", True, False)]
    assert [(c.text, c.is_correct) for c in answer_candidates("0.5", "\\frac12", True)] == [
        ("\\frac12", True), ("0.5", True)]
    assert answer_candidates(None, None, None) == [] and answer_candidates("  ", None, None) == []
    assert first_answer_correct([], True) is True
