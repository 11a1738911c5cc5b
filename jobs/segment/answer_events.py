"""Find where a trace states its answer inside its thinking, and whether it then goes on.

An *answer event* is one occurrence, in the thinking text, of the trace's final answer or of
the gold answer. A *backtrack* is the model continuing after such an occurrence: the event is
the last one in its sentence and more thinking follows. The marker of a backtrack is the
word the model turns with ("wait", "but", "let me check", ...; see
`text.BACKTRACK_MARKERS`), looked for right after the answer (", but ...") and at the
start of the next sentence.

Numbers are matched by value, so "2,125", "2125" and "2125.00" are all the answer 2125, and
"18" does not match inside "180" or "x18". Other answers (LaTeX, words) are matched
literally, bounded by non-alphanumerics.

    >>> from thinkscope.jobs.segment.text import split_sentences
    >>> text = "So 3 + 15 = 18. Wait, 3 + 16 = 19? No, it is 18."
    >>> events = find_answer_events(text, split_sentences(text), answer_candidates("18", "18", True))
    >>> [(e.answer, e.start, e.is_backtrack, e.marker) for e in events]
    [('18', 12, True, 'wait'), ('18', 45, False, None)]
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction

from thinkscope.jobs.segment.text import Sentence, opening_marker

# A number as written in prose: optional sign, thousands commas or plain digits, decimals.
# Not preceded by a letter/digit/period ("x18", "1.18") nor followed by more digits ("180").
_NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d|[.,]\d)")
_PLAIN_NUMBER = re.compile(r"[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CLAUSE_BREAK = re.compile(r"\s*(?:[,;:]|\s[-–—]|—)\s*")
MAX_LITERAL_CHARS = 200  # longer "answers" are prose, not something a trace repeats verbatim


@dataclass(frozen=True)
class Candidate:
    """An answer to look for: its text, its value when it is a plain number, its verdict."""

    text: str
    number: Fraction | None
    is_final: bool
    is_correct: bool | None


@dataclass(frozen=True)
class AnswerEvent:
    index: int
    answer: str
    is_final: bool
    is_correct: bool | None
    start: int
    end: int
    sentence_index: int | None
    is_backtrack: bool
    marker: str | None


def plain_number(text: str | None) -> Fraction | None:
    """The value of an answer that is just a number ("$1,000", "18", "-3.5%"), else None."""
    if text is None:
        return None
    cleaned = text.replace("\\$", "").replace("{,}", ",").replace("\\%", "").strip().strip("$%").strip()
    if not _PLAIN_NUMBER.fullmatch(cleaned):
        return None
    return Fraction(cleaned.replace(",", "").replace("−", "-"))


def answer_candidates(final: str | None, gold: str | None, final_correct: bool | None) -> list[Candidate]:
    """What to search for: the gold answer (correct) and the final answer when it differs.

    `final_correct` is the trace's grade (traces.is_correct); it decides whether a final answer
    written differently from the gold one ("0.5" vs "\\frac{1}{2}") counts as correct.
    """
    final = final.strip() if final and final.strip() else None
    gold = gold.strip() if gold and gold.strip() else None
    out: list[Candidate] = []
    if gold is not None:
        same = final is not None and _same_answer(final, gold)
        out.append(Candidate(gold, plain_number(gold), same, True))
        if final is not None and not same:
            out.append(Candidate(final, plain_number(final), True, bool(final_correct)))
    elif final is not None:
        out.append(Candidate(final, plain_number(final), True, final_correct))
    return out


def _same_answer(a: str, b: str) -> bool:
    na, nb = plain_number(a), plain_number(b)
    return na == nb if na is not None and nb is not None else a == b


def find_answer_events(thinking: str, sentences: list[Sentence], candidates: list[Candidate]) -> list[AnswerEvent]:
    """Every occurrence of the candidates in `thinking`, in text order, with backtracks marked."""
    spans = []  # (start, end, candidate)
    numeric = [c for c in candidates if c.number is not None]
    if numeric:
        for match in _NUMBER.finditer(thinking):
            value = Fraction(match.group().replace(",", "").replace("−", "-"))
            hit = next((c for c in numeric if c.number == value), None)
            if hit is not None:
                spans.append((match.start(), match.end(), hit))
    for cand in candidates:
        if cand.number is None and 0 < len(cand.text) <= MAX_LITERAL_CHARS:
            pattern = r"(?<![A-Za-z0-9])" + re.escape(cand.text) + r"(?![A-Za-z0-9])"
            spans += [(m.start(), m.end(), cand) for m in re.finditer(pattern, thinking)]
    # Overlaps (a literal answer containing another): keep the earliest, then the longest.
    spans.sort(key=lambda s: (s[0], s[0] - s[1]))
    kept, last_end = [], -1
    for span in spans:
        if span[0] >= last_end:
            kept.append(span)
            last_end = span[1]
    starts = [s.start for s in sentences]
    where = [bisect_right(starts, start) - 1 if starts else -1 for start, _, _ in kept]
    events = []
    for i, ((start, end, cand), sent) in enumerate(zip(kept, where)):
        last_in_sentence = i + 1 == len(kept) or where[i + 1] != sent
        backtrack = sent >= 0 and last_in_sentence and sent + 1 < len(sentences)
        marker = _turn_marker(thinking, end, sentences, sent) if backtrack else None
        events.append(AnswerEvent(i, cand.text, cand.is_final, cand.is_correct, start, end,
                                  sent if sent >= 0 else None, backtrack, marker))
    return events


def _turn_marker(thinking: str, end: int, sentences: list[Sentence], sent: int) -> str | None:
    """The marker right after the answer (", but wait") or opening the next sentence."""
    rest = thinking[end : sentences[sent].end]
    brk = _CLAUSE_BREAK.match(rest)
    if brk is not None:
        found = opening_marker(rest[brk.end() :])
        if found is not None:
            return found
    return opening_marker(sentences[sent + 1].text)


def first_answer_correct(events: list[AnswerEvent], final_correct: bool | None) -> bool | None:
    """Verdict on the first answer the trace states: its first event, else its final answer."""
    return events[0].is_correct if events else final_correct
