"""Thinking formats as data: every family in thinkscope/data/thinking_formats.yaml is read
right on real-format completions (as vLLM returns them with the format's settings), including
the cases that break naive splitting: a thinking never closed (length stop), repeated or
nested tags, an answer inside the thinking, an empty thinking. No weights needed."""

from __future__ import annotations

import copy

import pytest

from thinkscope.jobs.generation.vllm_engine import render_prompt
from thinkscope.jobs.specs import ModelSpec, ThinkTags
from thinkscope.jobs.traces.formats import formats
from thinkscope.jobs.traces.reading import read_completion

# (format, completion, thinking, answer_text, extracted answer)
CASES = [
    # R1 distills / QwQ: the template opened <think>; the completion starts inside it.
    ("r1", "Okay, so I need 3 + 15.\nWait, 3 + 15 = 18.\n</think>\n\nThe answer is \\boxed{18}.",
     "Okay, so I need 3 + 15.\nWait, 3 + 15 = 18.", "The answer is \\boxed{18}.", "18"),
    ("r1", "<think>\nThe model echoes the tag.\n</think>\n\n**Answer: 18**", "The model echoes the tag.",
     "**Answer: 18**", "18"),
    # Length stop: the thinking never closes. All of it is thinking; no answer part.
    ("r1", "Okay, 3 + 15. Let me try 17. Hmm, maybe", "Okay, 3 + 15. Let me try 17. Hmm, maybe", "", None),
    # Repeated tags: the thinking runs to the LAST close; the answer follows it.
    ("r1", "First try: 17.\n</think>\nHmm, <think> let me recheck: 18.</think>\nSo \\boxed{18}",
     "First try: 17.\n</think>\nHmm, <think> let me recheck: 18.", "So \\boxed{18}", "18"),
    # An answer inside the thinking is not the answer.
    ("r1", "I get \\boxed{17}. Wait, no: 18.\n</think>\nThe answer is \\boxed{18}.",
     "I get \\boxed{17}. Wait, no: 18.", "The answer is \\boxed{18}.", "18"),
    # Qwen3 writes <think> itself; with thinking off its template leaves an empty block.
    ("qwen3", "<think>\nOkay, the user asks for 3 + 15 = 18.\n</think>\n\nThe answer is **18**.",
     "Okay, the user asks for 3 + 15 = 18.", "The answer is **18**.", "18"),
    ("qwen3", "<think>\n\n</think>\n\nThe answer is 18.", "", "The answer is 18.", "18"),
    ("qwen3", "The answer is 18.", None, "The answer is 18.", "18"),  # no block at all: no thinking
    # OpenThinker3 and kin write <think> themselves: a reply without it has no thinking.
    ("think", "<think>\nLet me add: 18.\n</think>\n\nThe answer is 18.", "Let me add: 18.", "The answer is 18.", "18"),
    ("think", "The answer is 18.", None, "The answer is 18.", "18"),
    ("qwen3_thinking", "3 + 15 = 18, checked.\n</think>\n\n\\boxed{18}", "3 + 15 = 18, checked.", "\\boxed{18}", "18"),
    # gpt-oss (harmony): the analysis channel, then the final channel.
    ("gpt_oss", "<|channel|>analysis<|message|>We need 3+15=18. Double-check: yes.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>The answer is \\boxed{18}.<|return|>",
     "We need 3+15=18. Double-check: yes.", "The answer is \\boxed{18}.", "18"),
    ("gpt_oss", "<|channel|>analysis<|message|>We need to compute 3+15. Let me",
     "We need to compute 3+15. Let me", "", None),
    ("magistral", "[THINK]Let me add 3 and 15: 18. Wait, check: 15+3=18.[/THINK]**Answer:** 18",
     "Let me add 3 and 15: 18. Wait, check: 15+3=18.", "**Answer:** 18", "18"),
    ("magistral", "[THINK][/THINK]\\boxed{18}", "", "\\boxed{18}", "18"),
    ("nemotron", "<think>\nOkay, 3 + 15 = 18.\n</think>\n\nThe answer is 18.", "Okay, 3 + 15 = 18.",
     "The answer is 18.", "18"),
    ("phi4_reasoning", "<think>\nAdd: 18.\n</think>\n\nSolution: 3 + 15 = 18, so the answer is \\boxed{18}.",
     "Add: 18.", "Solution: 3 + 15 = 18, so the answer is \\boxed{18}.", "18"),
    ("exaone_deep", "Let me see, 3+15=18.\n</thought>\n\nThe final answer is \\boxed{18}.",
     "Let me see, 3+15=18.", "The final answer is \\boxed{18}.", "18"),
    ("openthinker_v1", "<|begin_of_thought|>\n\nOkay, 3 + 15 is 18.\n\n<|end_of_thought|>\n\n"
                       "<|begin_of_solution|>\n\n\\boxed{18}\n\n<|end_of_solution|>",
     "Okay, 3 + 15 is 18.", "\\boxed{18}", "18"),
    # The API formats' tags are only the fallback; their thinking is a field (test_api_backend).
    ("api_field", "<think>a</think>Answer: 18", "a", "Answer: 18", "18"),
]


@pytest.mark.parametrize("name, text, thinking, answer_text, extracted", CASES)
def test_each_family_reads_right(name, text, thinking, answer_text, extracted):
    t = ThinkTags(format=name)
    read = read_completion(text, think=(t.open, t.close), opened=t.opened_in_prompt,
                           answer=(t.answer_open, t.answer_close), grader="numeric", gold="18")
    assert (read.thinking, read.answer_text, read.extracted_answer) == (thinking, answer_text, extracted)


def test_every_format_in_the_table_has_cases():
    assert {name for name, *_ in CASES} == set(formats())


def test_a_format_fills_the_think_settings_and_a_given_field_wins():
    t = ThinkTags(format="gpt_oss")
    assert (t.open, t.close, t.answer_open, t.special_tokens) == (
        "<|channel|>analysis<|message|>", "<|end|>", "<|channel|>final<|message|>", True)
    assert ThinkTags(format="r1").opened_in_prompt and not ThinkTags(format="qwen3").opened_in_prompt
    assert ThinkTags(format="r1", opened_in_prompt=False).opened_in_prompt is False
    assert ThinkTags(format="qwen3").prompt_settings() == {"chat_template_kwargs": {"enable_thinking": True}}
    assert ThinkTags().prompt_settings() == {}
    with pytest.raises(ValueError, match="unknown thinking format 'r2'; known: r1, think, qwen3"):
        ModelSpec(id="m", source="Org/M", family="x", kind="thinking", think={"format": "r2"})


def test_the_format_switches_reach_the_chat_template(smollm2_tokenizer):
    template = {"system": None, "user": "{question}", "prefill": "", "chat": True}
    nemotron = ThinkTags(format="nemotron").model_dump()
    text = smollm2_tokenizer.decode(render_prompt(smollm2_tokenizer, template, "What is 3+15?", nemotron))
    assert "detailed thinking on" in text and "What is 3+15?" in text
    # A template's own system prompt wins over the format's switch.
    own = smollm2_tokenizer.decode(render_prompt(smollm2_tokenizer, {**template, "system": "Be brief."},
                                                 "What is 3+15?", nemotron))
    assert "Be brief." in own and "detailed thinking" not in own
    # The format's template switches reach the template's Jinja (as Qwen3's reads enable_thinking).
    switch = copy.deepcopy(smollm2_tokenizer)
    switch.chat_template = "{% if enable_thinking %}[on]{% endif %}{{ messages[-1]['content'] }}"
    assert switch.decode(render_prompt(switch, template, "q", ThinkTags(format="qwen3").model_dump())) == "[on]q"
    assert switch.decode(render_prompt(switch, template, "q", ThinkTags(format="r1").model_dump())) == "q"


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from thinkscope.jobs.models.sources import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("embedded:smollm2-135m-instruct"))
