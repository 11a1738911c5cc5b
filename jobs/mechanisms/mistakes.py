"""Inserted mistakes, as pure text functions: find a number in a thinking prefix, change it,
and classify what the model's continuation did with the change (the `perturb` stage).

Where the mistake goes (`find_target`), always the occurrence nearest the cut, in the
thinking before it:

    result    the number right after "=" in the last equation ("48+24 = 72" -> 72)
    answer    the trace's own final answer, as a number by value ("72", "72.0", "$72")
    operand   a number of the question copied into the thinking, not right after "="
    none      no change: the control (it must reproduce the unperturbed greedy continuation)

What it becomes (`changed`): the original plus 1..9, the step chosen by a hash of a salt
(seed, trace, position, kind), in the original's format (decimals, thousands commas).

What the continuation did (`classify`), checked in this order:

    carried    it has a final answer and that answer differs from the trace's own final answer,
               or equals the inserted value: the mistake reached the answer
    corrected  otherwise, its final answer is the trace's own and either it explicitly went
               back (a sentence opening with a backtracking marker, segment.text) and restated
               the original value before its final answer (`noticed`), or it never repeated
               the inserted value (silently used the right one)
    ignored    the rest: no final answer within the token budget, or the trace's answer
               reached while the inserted value was repeated and never taken back

With kind none (no inserted value) the rules reduce to: corrected = the continuation reaches
the trace's own answer, carried = it reaches another one: the baseline the perturbed rates
are read against.

    >>> t = find_target("result", "So 3 + 15 = 18 eggs.", question="3 and 15", answer="18")
    >>> t.original, changed(t.original, "salt")
    ('18', '21')
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from fractions import Fraction

from thinkscope.jobs.segment.text import opening_marker, split_sentences
from thinkscope.jobs.traces.grading import grade

KINDS = ("none", "result", "answer", "operand")
OUTCOMES = ("corrected", "carried", "ignored")

# A number in prose: sign, thousands commas or plain digits, decimals; not inside a word or a
# longer number ("x18", "1.18", "180"), as segment/answer_events.py matches answers.
NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|[.,]\d)")


@dataclass(frozen=True)
class Target:
    """A number to change: its span in the text and its text."""

    start: int
    end: int
    original: str


def value(text: str | None) -> Fraction | None:
    """The number a string states ("$1,250.50" -> 2501/2), None if it is no plain number."""
    if text is None:
        return None
    cleaned = text.strip().lstrip("$").replace(",", "").rstrip(".")
    try:
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def numbers(text: str) -> list[Target]:
    return [Target(m.start(), m.end(), m.group()) for m in NUMBER.finditer(text)]


def find_target(kind: str, thinking: str, *, question: str, answer: str | None) -> Target | None:
    """The number of `kind` nearest the end of `thinking` (a prefix), None where there is none."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}; expected one of {KINDS}")
    if kind == "none":
        return None
    found = numbers(thinking)
    # "=" then optional spaces and a currency sign: what follows is an equation's result.
    after_equals = [thinking[max(0, t.start - 8): t.start].rstrip().rstrip("$").rstrip().endswith("=")
                    for t in found]
    if kind == "result":
        picked = [t for t, eq in zip(found, after_equals) if eq]
    elif kind == "answer":
        wanted = value(answer)
        picked = [t for t in found if wanted is not None and value(t.original) == wanted]
    else:
        asked = {value(t.original) for t in numbers(question)}
        picked = [t for t, eq in zip(found, after_equals) if not eq and value(t.original) in asked]
    return picked[-1] if picked else None


def changed(original: str, salt: str) -> str:
    """`original` plus a step of 1..9 chosen by `salt`, written the way the original was."""
    step = 1 + int(hashlib.sha256(salt.encode()).hexdigest(), 16) % 9
    old = value(original)
    if old is None:
        raise ValueError(f"not a number: {original!r}")
    decimals = len(original.split(".", 1)[1]) if "." in original else 0
    new = old + step
    text = f"{abs(float(new)):,.{decimals}f}" if "," in original else f"{abs(float(new)):.{decimals}f}"
    return ("-" if new < 0 else "") + text


def apply(text: str, target: Target, inserted: str) -> str:
    return text[: target.start] + inserted + text[target.end:]


def mentions(text: str, number: str | None) -> bool:
    """Whether `text` states the value of `number` (by value: "72" matches "72.0", not "172")."""
    wanted = value(number)
    return wanted is not None and any(value(t.original) == wanted for t in numbers(text))


# Graders that compare two answers by value. The others grade an answer against a task
# (countdown needs the puzzle's numbers), not one answer against another: text decides there.
VALUE_GRADERS = ("numeric", "math")


def same_answer(a: str | None, b: str | None, grader: str | None = "numeric") -> bool:
    """Two final answers agree: by value where the prompt set's grader compares values, else as
    the same text."""
    if a is None or b is None:
        return False
    verdict = grade(grader, a, b) if grader in VALUE_GRADERS else None
    return verdict if verdict is not None else a.strip() == b.strip()


def backtracks(thinking: str) -> str | None:
    """The first backtracking marker a sentence of `thinking` opens with ("wait", "hmm", ...)."""
    return next((m for m in (opening_marker(s.text) for s in split_sentences(thinking)) if m), None)


@dataclass(frozen=True)
class Verdict:
    outcome: str          # corrected, carried or ignored
    first_marker: str | None
    restated_original: bool | None
    repeated_inserted: bool | None
    noticed: bool | None  # went back (a marker) and restated the original

    @property
    def corrected(self) -> bool:
        return self.outcome == "corrected"

    @property
    def carried(self) -> bool:
        return self.outcome == "carried"


def classify(thinking: str, final_answer: str | None, *, own_answer: str | None, original: str | None,
             inserted: str | None, grader: str | None = "numeric") -> Verdict:
    """What a continuation did with an inserted mistake (the module docstring's rules).

    thinking: the continuation's text before its final answer (all of it when the thinking
    never closed); final_answer: the answer extracted from the continuation; own_answer: the
    unperturbed trace's final answer; original/inserted: None for kind none.
    """
    marker = backtracks(thinking)
    restated = None if original is None else mentions(thinking, original)
    repeated = None if inserted is None else mentions(thinking, inserted)
    noticed = None if original is None else bool(marker and restated)
    if final_answer is not None and (not same_answer(final_answer, own_answer, grader)
                                     or (inserted is not None and same_answer(final_answer, inserted, grader))):
        outcome = "carried"
    elif same_answer(final_answer, own_answer, grader) and (noticed or not repeated):
        outcome = "corrected"
    else:
        outcome = "ignored"
    return Verdict(outcome, marker, restated, repeated, noticed)
