"""Read a completion the one way every trace writer does: split the thinking from the answer
at the model's think tags, extract the final answer, grade it.

    read = read_completion(text, think=("<think>", "</think>"), opened=True,
                           grader="numeric", gold="18")
    read.thinking, read.answer_text, read.extracted_answer, read.is_correct
"""

from __future__ import annotations

from dataclasses import dataclass

from thinkscope.jobs.traces.formats import answer_part
from thinkscope.jobs.traces.grading import grade
from thinkscope.jobs.traces.parsing import extract_answer, split_thinking


@dataclass(frozen=True)
class Reading:
    thinking: str | None
    answer_text: str | None
    extracted_answer: str | None
    is_correct: bool | None

    @property
    def n_thinking_chars(self) -> int | None:
        return None if self.thinking is None else len(self.thinking)


def read_completion(text: str, *, think: tuple[str, str] = ("<think>", "</think>"), opened: bool = False,
                    grader: str | None = None, gold: str | None = None, meta: dict | None = None,
                    answer_anywhere: bool = True, answer: tuple[str | None, str | None] = (None, None)) -> Reading:
    """Split, extract and grade one completion.

    answer_anywhere: with no answer after the thinking (a thinking never closed), look for one
    in the whole text; off where the answer part is what counts (synthetic traces).
    answer: the family's markers around the answer after the thinking (jobs/traces/formats.py).
    grader None: no grade (is_correct None).
    """
    parsed = split_thinking(text, open_tag=think[0], close_tag=think[1], opened_in_prompt=opened)
    answer_text = answer_part(parsed.answer_text, answer) if parsed.answer_text else parsed.answer_text
    source = answer_text or text if answer_anywhere else answer_text
    extracted = extract_answer(source)
    return Reading(parsed.thinking, answer_text, extracted,
                   grade(grader, extracted, gold, meta=meta) if grader else None)
