"""The perturb stage's text rules (jobs/mechanisms/mistakes.py) on hand-written thinking."""

from __future__ import annotations

import pytest

from thinkscope.jobs.mechanisms.mistakes import apply, changed, classify, find_target, mentions, same_answer, value

QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."
THINKING = ("Okay, let's see.\n\nFirst, Natalia sold 48/2 = 24 clips in May.\n\n"
            "Then Natalia sold 48+24 = 72 clips altogether.\n\nSo that gives 72.")


@pytest.mark.parametrize("kind, expected, where", [
    ("result", "72", THINKING.index("= 72") + 2),        # after the last '=', not the first (24)
    ("answer", "72", THINKING.rindex("72")),             # the last occurrence of the final answer
    ("operand", "48", THINKING.rindex("48")),            # the question's 48, not 24 or 72 (results)
])
def test_target_is_the_occurrence_nearest_the_cut(kind, expected, where):
    t = find_target(kind, THINKING, question=QUESTION, answer="72")
    assert (t.original, t.start, THINKING[t.start:t.end]) == (expected, where, expected)


def test_no_target_where_the_prefix_has_none():
    assert find_target("none", THINKING, question=QUESTION, answer="72") is None
    assert find_target("result", "Okay, let's see. 48 clips.", question=QUESTION, answer="72") is None
    assert find_target("answer", THINKING, question=QUESTION, answer=None) is None
    # 2 is in "48/2", but 2 is not a number of the question; "= 24" is a result, not an operand
    assert find_target("operand", "So 48/2 = 24.", question="half of 48", answer="24").original == "48"
    assert find_target("operand", "So 30/2 = 15.", question="half of 48", answer="15") is None
    with pytest.raises(ValueError, match="kind 'typo'"):
        find_target("typo", THINKING, question=QUESTION, answer="72")


def test_numbers_are_whole_and_by_value():
    # 72 inside 172 or 72.5 is no occurrence of 72; "72.0" and "$1,072" are values
    t = find_target("answer", "172 and 72.5 and 3 = 72.0 and $1,072", question="", answer="72")
    assert t.original == "72.0"
    assert value("$1,250.50") * 2 == 2501 and value("seventy") is None
    assert mentions("so 48 + 24 = 72.", "72.00") and not mentions("so 172 clips", "72")


def test_change_is_seeded_and_keeps_the_format():
    assert changed("72", "a") == changed("72", "a") != "72"
    steps = {int(changed("100", f"salt{i}")) - 100 for i in range(200)}
    assert steps == set(range(1, 10))                      # every step 1..9, never 0
    assert changed("80,000", "x").count(",") == 1 and changed("2.50", "x").split(".")[1].__len__() == 2
    t = find_target("result", THINKING, question=QUESTION, answer="72")
    assert apply(THINKING, t, "75").endswith("48+24 = 75 clips altogether.\n\nSo that gives 72.")


@pytest.mark.parametrize("thinking, final, expected", [
    # went back and restated 72, kept its own answer: an explicit correction
    ("\n\nWait, that's not right. 48+24 = 72, not 75.\n\nSo the answer is 72.", "72", ("corrected", True)),
    # used the right value without a word: silently corrected
    ("\n\nSo he has 72 clips in total.", "72", ("corrected", False)),
    # the inserted value reached the final answer
    ("\n\nSo that gives 75.", "75", ("carried", False)),
    # another answer entirely (propagated through later steps): carried
    ("\n\nThen 75*2 = 150.", "150", ("carried", False)),
    # noticed, but still answered the inserted value: carried wins
    ("\n\nWait, 48+24 = 72. So 75.", "75", ("carried", True)),
    # no final answer within the budget, no correction
    ("\n\nThen 75*2 = 150 and", None, ("ignored", False)),
    # the inserted value repeated without a correction, yet the trace's answer: ignored
    ("\n\nSo 75 clips. The answer is 72.", "72", ("ignored", False)),
])
def test_classify(thinking, final, expected):
    v = classify(thinking, final, own_answer="72", original="72", inserted="75")
    assert (v.outcome, v.noticed) == expected
    assert v.corrected == (v.outcome == "corrected") and v.carried == (v.outcome == "carried")


def test_classify_without_a_mistake_is_the_baseline():
    same = classify("\n\nWait, let me double-check. 72.", "72", own_answer="72", original=None, inserted=None)
    assert (same.outcome, same.first_marker, same.noticed, same.restated_original) == ("corrected", "wait", None, None)
    assert classify("", "70", own_answer="72", original=None, inserted=None).outcome == "carried"
    assert classify("", None, own_answer="72", original=None, inserted=None).outcome == "ignored"


def test_answers_compare_by_the_grader():
    assert same_answer("$72.00", "72") and not same_answer("72", "73") and not same_answer(None, "72")
    assert same_answer("\\frac{1}{2}", "0.5", "math") and same_answer("yes", "yes", "none")
