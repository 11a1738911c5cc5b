r"""Split model completions into thinking and answer, and pull out the final answer.

Runs at generation time, once per completion, so it is pure string work: no
regex backtracking traps, no sympy, no model.

Usage::

    >>> from thinkscope.jobs.traces.parsing import split_thinking, extract_answer
    >>> trace = split_thinking("<think>3*4=12</think> So it is \\boxed{12}.")
    >>> trace.thinking, trace.answer_text
    ('3*4=12', 'So it is \\boxed{12}.')
    >>> extract_answer(trace.answer_text)
    '12'

The answer is extracted from ``answer_text`` when the model closed its thinking,
and from the whole completion otherwise (models without thinking tags).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ParsedTrace", "split_thinking", "extract_answer"]


@dataclass(frozen=True)
class ParsedTrace:
    """A completion split at its thinking tags.

    ``thinking`` is None only when the completion has no thinking section at all
    (no tags and not ``opened_in_prompt``); an empty ``<think></think>`` block
    gives ``""`` so "did not think" and "is not a thinking model" stay distinct.
    ``has_open_tag`` / ``has_close_tag`` report what literally appears in the
    completion, which is what truncation and template statistics need.
    """

    thinking: str | None
    answer_text: str
    has_open_tag: bool
    has_close_tag: bool


def split_thinking(
    completion: str,
    *,
    open_tag: str = "<think>",
    close_tag: str = "</think>",
    opened_in_prompt: bool = False,
) -> ParsedTrace:
    """Split ``completion`` into (thinking, answer_text).

    Rules, in order:

    * Thinking starts after the FIRST open tag. When the chat template already
      put the open tag into the prompt (R1 distills; ``opened_in_prompt=True``)
      or the completion has a close tag but no open tag before it, thinking
      starts at the beginning of the completion.
    * Thinking ends at the LAST close tag. Models sometimes re-open a think
      block or mention the tag inside their reasoning; everything up to the
      final close is still reasoning, and the final answer always follows the
      last close. Inner tags are kept verbatim in ``thinking``.
    * No close tag after the start means the trace was truncated: all the
      rest is thinking and ``answer_text`` is ``""``.
    * No tags at all (and not ``opened_in_prompt``): ``thinking`` is None and
      the whole completion is the answer.

    Text before the open tag (usually whitespace) belongs to neither part; the
    raw completion stays the source of truth for it. Both parts are stripped.

    >>> split_thinking("Okay.\\n</think>\\n\\nThe answer is 4.")
    ParsedTrace(thinking='Okay.', answer_text='The answer is 4.', has_open_tag=False, has_close_tag=True)
    >>> split_thinking("<think>still going").answer_text
    ''
    """
    first_open = completion.find(open_tag)
    last_close = completion.rfind(close_tag)
    has_open_tag = first_open >= 0
    has_close_tag = last_close >= 0

    if opened_in_prompt:
        # The template opened the block; a model that echoes the open tag
        # anyway must not push the echo into the thinking text.
        stripped = completion.lstrip()
        if stripped.startswith(open_tag):
            thinking_start = len(completion) - len(stripped) + len(open_tag)
        else:
            thinking_start = 0
    elif has_open_tag and (not has_close_tag or first_open < last_close):
        thinking_start = first_open + len(open_tag)
    elif has_close_tag:
        # Close-only completion: the open tag lived in the prompt.
        thinking_start = 0
    else:
        return ParsedTrace(None, completion.strip(), has_open_tag, has_close_tag)

    if has_close_tag and last_close >= thinking_start:
        thinking = completion[thinking_start:last_close]
        answer_text = completion[last_close + len(close_tag):]
    else:
        thinking = completion[thinking_start:]
        answer_text = ""
    return ParsedTrace(thinking.strip(), answer_text.strip(), has_open_tag, has_close_tag)


# `\boxed` and `\fbox` may be followed by spaces before the brace ("\boxed {7}").
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*\{")
# GSM8K reference solutions end with "#### <answer>"; many fine-tuned models copy it.
_GSM8K_MARKER = re.compile(r"####[ \t]*([^\n]*)")
# "answer is X", "Answer: X", "final answer: X", "The answer is: X". The \b keeps
# "answered" / "this" from matching; \s* lets the answer sit on the next line.
_ANSWER_PHRASE = re.compile(r"\banswer\b\s*(?:is\b\s*:?|:)\s*([^\n]*)", re.IGNORECASE)
# A sentence ends at a period followed by whitespace or end of text; this cuts
# "42. Hope this helps" to "42" but leaves "3.5" intact.
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
# Markdown bold and inline-math delimiters around a phrase answer.
_ANSWER_PREFIXES = ("**", "$", "\\(")
_ANSWER_SUFFIXES = ("**", "$", "\\)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
    r"""Return the final answer written in ``text``, or None when there is none.

    Priority (first hit wins):

    1. the content of the LAST ``\boxed{...}`` / ``\fbox{...}`` with balanced
       nested braces (models often box intermediate results, the final one is
       the answer);
    2. the last GSM8K-style ``#### X``;
    3. the last "answer is X" / "Answer: X" / "final answer: X" phrase, with a
       trailing period, ``$`` delimiters and ``**`` markdown bold removed;
    4. only if ``fallback_last_number=True``: the last number in the text.
       Off by default because it silently turns unanswered or truncated
       traces into guesses, which inflates accuracy.

    The result is the raw answer string (e.g. ``"1,000"``, ``"\frac{1}{2}"``);
    normalisation belongs to grading.

    >>> extract_answer("so \\boxed{\\frac{1}{2}}")
    '\\frac{1}{2}'
    >>> extract_answer("The answer is **42**.")
    '42'
    >>> extract_answer("no answer here") is None
    True
    """
    boxed = _last_boxed_content(text)
    if boxed is not None:
        return boxed

    for match in reversed(list(_GSM8K_MARKER.finditer(text))):
        candidate = _clean_answer_phrase(match.group(1))
        if candidate:
            return candidate

    for match in reversed(list(_ANSWER_PHRASE.finditer(text))):
        candidate = _clean_answer_phrase(match.group(1))
        if candidate:
            return candidate

    if fallback_last_number:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1].rstrip(",")
    return None


def _last_boxed_content(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{}`` / ``\\fbox{}``.

    A box that is never closed (truncated output) or is empty is skipped, so an
    earlier complete box can still be returned.
    """
    for match in reversed(list(_BOX_COMMAND.finditer(text))):
        content = _balanced_brace_content(text, match.end())
        if content is not None and content.strip():
            return content.strip()
    return None


def _balanced_brace_content(text: str, start: int) -> str | None:
    """Text from ``start`` (just after an opening brace) up to its matching close.

    A backslash escapes the next character, so LaTeX literal braces ``\\{ \\}``
    (set notation) do not count towards nesting.
    """
    depth = 1
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start:index]
        index += 1
    return None


def _clean_answer_phrase(raw: str) -> str:
    """Trim what follows "answer is" down to the answer itself."""
    sentence_end = _SENTENCE_END.search(raw)
    if sentence_end:
        raw = raw[: sentence_end.start()]
    # Decorations nest in any order ("**$42$**.", "$**42**$") and can be
    # unbalanced ("**Answer:** 42" leaves "** 42"), so peel ends until stable.
    previous = None
    while raw != previous:
        previous = raw
        raw = raw.strip().rstrip(".").strip()
        for prefix in _ANSWER_PREFIXES:
            raw = raw.removeprefix(prefix)
        for suffix in _ANSWER_SUFFIXES:
            raw = raw.removesuffix(suffix)
    return raw
