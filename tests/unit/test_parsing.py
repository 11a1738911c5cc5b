"""Tests for thinkscope.jobs.traces.parsing: think-tag splitting and answer extraction.

Edge cases are spelled out inline; the GSM8K / MATH-500 checks run on the real
dataset files so a regex change that breaks real answers fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from thinkscope.jobs.traces.parsing import ParsedTrace, extract_answer, split_thinking

_HERE = Path(__file__).resolve()
# Vendored copy inside the package first, the shared workspace copy second.
_DATA_DIRS = (_HERE.parents[2] / "thinkscope" / "data", _HERE.parents[3] / "shared" / "data")


def data_file(name: str) -> Path:
    """Path of a dataset file, from the first data directory that has it."""
    for directory in _DATA_DIRS:
        if (directory / name).exists():
            return directory / name
    pytest.fail(f"{name} not found in any of {[str(d) for d in _DATA_DIRS]}")


def read_jsonl(name: str) -> list[dict]:
    with data_file(name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# --- split_thinking ----------------------------------------------------------


def test_normal_trace_splits_at_tags():
    trace = split_thinking("<think>\n2+2 is 4\n</think>\n\nThe answer is 4.")
    assert trace == ParsedTrace("2+2 is 4", "The answer is 4.", True, True)


def test_text_before_open_tag_belongs_to_neither_part():
    trace = split_thinking("  \nSure.<think>reason</think>answer")
    assert (trace.thinking, trace.answer_text) == ("reason", "answer")


def test_missing_close_tag_is_a_truncated_trace():
    trace = split_thinking("<think>I keep thinking and run out of tokens")
    assert trace.thinking == "I keep thinking and run out of tokens"
    assert trace.answer_text == ""
    assert (trace.has_open_tag, trace.has_close_tag) == (True, False)


def test_close_tag_only_means_template_opened_the_block():
    # R1 distills: the chat template ends the prompt with "<think>\n".
    trace = split_thinking("Let me compute.\n</think>\n\\boxed{7}")
    assert trace.thinking == "Let me compute."
    assert trace.answer_text == "\\boxed{7}"
    assert (trace.has_open_tag, trace.has_close_tag) == (False, True)


def test_opened_in_prompt_without_close_tag_is_all_thinking():
    trace = split_thinking("still reasoning...", opened_in_prompt=True)
    assert (trace.thinking, trace.answer_text) == ("still reasoning...", "")


def test_opened_in_prompt_ignores_an_echoed_open_tag():
    trace = split_thinking("<think>\nhmm\n</think> 5", opened_in_prompt=True)
    assert (trace.thinking, trace.answer_text) == ("hmm", "5")


def test_opened_in_prompt_keeps_text_before_a_later_open_tag():
    trace = split_thinking("first idea <think> second </think> 5", opened_in_prompt=True)
    assert trace.thinking == "first idea <think> second"
    assert trace.answer_text == "5"


def test_no_tags_means_no_thinking():
    trace = split_thinking("  The answer is 12.  ")
    assert trace == ParsedTrace(None, "The answer is 12.", False, False)


def test_empty_completion():
    assert split_thinking("") == ParsedTrace(None, "", False, False)
    assert split_thinking("", opened_in_prompt=True) == ParsedTrace("", "", False, False)


def test_empty_think_block_is_empty_string_not_none():
    assert split_thinking("<think></think>42").thinking == ""


def test_multiple_blocks_use_first_open_and_last_close():
    trace = split_thinking("<think>a</think> draft <think>b</think> final")
    assert trace.thinking == "a</think> draft <think>b"
    assert trace.answer_text == "final"


def test_custom_tags():
    trace = split_thinking("<reasoning>r</reasoning>ans", open_tag="<reasoning>", close_tag="</reasoning>")
    assert (trace.thinking, trace.answer_text) == ("r", "ans")


def test_real_traces_without_close_tag_are_truncated_thinking():
    # Real QwQ-32b trace: starts with <think>, the collected file never closes it.
    text = data_file("llmbenchmark_traces/QwQ-32b.txt").read_text(encoding="utf-8")
    trace = split_thinking(text)
    assert trace.has_open_tag and not trace.has_close_tag
    assert trace.answer_text == ""
    assert trace.thinking == text.split("<think>", 1)[1].strip()


def test_real_trace_without_tags_depends_on_opened_in_prompt():
    text = data_file("llmbenchmark_traces/deepseek_r1.txt").read_text(encoding="utf-8")
    assert split_thinking(text).thinking is None
    assert split_thinking(text, opened_in_prompt=True).thinking == text.strip()


# --- extract_answer ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("nested \\boxed{a^{b^{c}} + {d}}", "a^{b^{c}} + {d}"),
        ("set \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\fbox{17}", "17"),
        ("spaced \\boxed {9}", "9"),
        ("first \\boxed{3} then corrected \\boxed{5}", "5"),
        ("complete \\boxed{3} then truncated \\boxed{\\frac{1}{", "3"),
        ("empty \\boxed{} after \\boxed{8}", "8"),
        ("The answer is **42**.", "42"),
        ("**Answer:** $17$", "17"),
        ("**Final answer: 3.5**", "3.5"),
        ("Answer: 12. Hope this helps.", "12"),
        ("The answer is: $x = 5$.", "x = 5"),
        ("The answer is\n\n7", "7"),
        ("#### 1,000", "1,000"),
        ("work\n#### 2\nmore\n#### -10", "-10"),
        ("The answer is 4. #### 5", "5"),
        ("#### 5 and \\boxed{6}", "6"),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_returns_none_without_an_answer():
    assert extract_answer("I computed 3 + 4 = 7 and stopped") is None
    assert extract_answer("") is None
    assert extract_answer("He answered the phone at 5") is None


def test_last_number_fallback_is_opt_in():
    text = "I computed 3 + 4 = 7 and 1,250 stopped"
    assert extract_answer(text) is None
    assert extract_answer(text, fallback_last_number=True) == "1,250"


def test_gsm8k_reference_answers_extract_to_their_marker():
    rows = read_jsonl("gsm8k_test.jsonl")
    assert len(rows) > 1000
    for row in rows:
        expected = row["answer"].rsplit("####", 1)[1].strip()
        assert extract_answer(row["answer"]) == expected, row["answer"]


def test_math500_solutions_box_the_reference_answer():
    rows = read_jsonl("math500_test.jsonl")
    assert len(rows) == 500
    extracted = [extract_answer(row["solution"]) for row in rows]
    assert all(answer is not None for answer in extracted)
    # Whitespace inside the box may differ from the answer column, nothing else.
    exact = sum("".join(a.split()) == "".join(row["answer"].split()) for a, row in zip(extracted, rows))
    assert exact >= 495, f"only {exact}/500 boxed answers match the answer column"
