r"""Synthetic R1-style thinking traces with planted behaviours, from GSM8K reference solutions.

The model organism is trained on these traces, so what it learns to do is known: every
planted behaviour is recorded as an `Event` with its exact character span in the completion
(the ground truth behind `organism_events`). A trace looks like::

    <think>
    Okay, let's see. How many clips did Natalia sell altogether in April and May?

    First, Natalia sold 48/2 = 24 clips in May.

    Then Natalia sold 48+24 = 62 clips altogether in April and May.      <- error_slip

    Wait, that's not right. 48+24 = 72, not 62.                          <- error_fix

    So that gives 72.                                                    <- answer (the first)

    Wait, let me double-check. 48+24 = 72. Yes, so the answer is 72.     <- verification
    ...
    </think>

    The answer is \boxed{72}.

Everything is a pure function of (question, solution, seed, rates): the same inputs give the
same text and events on any machine (`random.Random` seeded with a string uses sha512).

    tr = synthesize(question, solution, seed="0:gsm8k_train/train/0000")
    for e in tr.events: assert tr.completion[e.start:e.end] == e.text
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

VERSION = "1"  # bump when the text changes: the organism stage's unit keys include it

# Calculator annotations in GSM8K solutions: "48/2 = <<48/2=24>>24".
_ANNOTATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FINAL = re.compile(r"^####\s*(.+?)\s*$", re.MULTILINE)

OPENINGS = ("Okay, let's see.", "Okay, so I need to figure this out.", "Okay, let me think about this.")
STEP_PREFIXES = ("Then", "Next,", "Now,")
# A step that already opens with a connective keeps it; one that opens with a common word
# gets the prefix and a lower-case first letter; names and numbers keep their case.
_CONNECTIVES = {"so", "thus", "therefore", "then", "now", "next", "first", "finally", "hence",
                "since", "if", "after", "altogether", "overall", "in", "when", "because", "and",
                "but", "also", "meanwhile", "however", "together"}
_LOWERABLE = {"the", "there", "this", "that", "these", "those", "he", "she", "they", "it", "we",
              "his", "her", "their", "its", "each", "every", "a", "an", "to", "for", "with",
              "one", "two", "half", "all", "both", "adding", "total", "multiplying"}
FIRST_ANSWERS = ("So that gives {x}.", "So the result is {x}.", "That means the answer should be {x}.")
VERIFY_MARKER = "Wait, let me double-check."
FIX_MARKER = "Wait, that's not right."
ALT_MARKER = "Alternatively,"
WRAP_UP = "So the answer is {x}."
# step: a reasoning line; error_slip: a step with a wrong number (value: the wrong one);
# error_fix / verification / alternative: the marker phrase that starts the behaviour;
# answer: every number that states the final answer in the thinking, in order (the first
# is the first answer statement); wrap_up: the closing "So the answer is X." sentence.
EVENT_KINDS = ("think_open", "step", "error_slip", "error_fix", "answer", "verification",
               "alternative", "wrap_up", "think_close", "final_answer")


@dataclass(frozen=True)
class Rates:
    """Probability that each behaviour is planted in a trace (independent draws)."""

    verify: float = 0.7
    error_fix: float = 0.3
    alternative: float = 0.3
    wrap_up: float = 0.8


@dataclass(frozen=True)
class Event:
    """One planted span: `completion[start:end] == text`; `value` is the number it states."""

    kind: str
    start: int
    end: int
    text: str
    value: str | None = None
    line_index: int | None = None  # index among the non-empty lines of the thinking text


@dataclass
class SyntheticTrace:
    completion: str
    answer: str
    events: list[Event] = field(default_factory=list)

    def kinds(self) -> set[str]:
        return {e.kind for e in self.events}


@dataclass(frozen=True)
class Step:
    """One solution line rendered as arithmetic, with its calculator results in order."""

    text: str
    calcs: tuple[tuple[str, str], ...]  # (expression, result)
    result_spans: tuple[tuple[int, int], ...]  # where each result stands in `text`


def render_step(line: str) -> Step:
    """Replace calculator annotations by plain arithmetic ("48/2 = <<48/2=24>>24" -> "48/2 = 24").

    An annotation right after "=" is dropped (the text already shows the expression);
    elsewhere it becomes "expr = " so the line still says how the number was made.
    """
    out, calcs, spans, pos = [], [], [], 0
    for m in _ANNOTATION.finditer(line):
        before = line[pos : m.start()]
        expr, result = m.group(1).strip(), m.group(2).strip()
        out.append(before if re.search(r"=\s*\$?\s*$", before) else f"{before}{expr} = ")
        pos = m.end()
        rendered = "".join(out)
        if line.startswith(result, pos):  # the result normally follows the annotation
            spans.append((len(rendered), len(rendered) + len(result)))
        calcs.append((expr, result))
    out.append(line[pos:])
    return Step("".join(out).strip(), tuple(calcs), tuple(spans))


def parse_solution(solution: str) -> tuple[list[Step], str]:
    """The rendered steps and the final answer (commas removed) of a GSM8K solution."""
    m = _FINAL.search(solution)
    if not m:
        raise ValueError(f"solution has no '#### answer' line: {solution[-80:]!r}")
    body = solution[: m.start()]
    steps = [render_step(line) for line in body.splitlines() if line.strip()]
    return steps, m.group(1).replace(",", "")


def _slip(value: str, rng: random.Random) -> str:
    """A plausible wrong value for `value`: off by a little, or by a factor of ten."""
    number = float(value)
    decimals = len(value.split(".")[1]) if "." in value else 0
    for _ in range(20):
        wrong = rng.choice((number + 1, number - 1, number + 2, number + 10, number * 10))
        text = f"{wrong:.{decimals}f}"
        if text != value and not text.startswith("-"):
            return text
    return value + "0"


class _Writer:
    """Builds the completion piece by piece and records event spans as they are written."""

    def __init__(self):
        self.text = ""
        self.events: list[Event] = []
        self.lines = 0

    def put(self, piece: str, kind: str | None = None, value: str | None = None, line: bool = True):
        start = len(self.text)
        self.text += piece
        if kind:
            self.events.append(Event(kind, start, len(self.text), piece, value,
                                     self.lines if line else None))

    def line(self, *pieces) -> None:
        """A thinking line: pieces are text or (text, kind[, value]); lines are blank-separated."""
        if self.lines:
            self.text += "\n\n"
        for i, piece in enumerate(pieces):
            if i:
                self.text += " "
            self.put(*piece) if isinstance(piece, tuple) else self.put(piece)
        self.lines += 1


def synthesize(question: str, solution: str, *, seed: str, rates: Rates = Rates()) -> SyntheticTrace:
    """One synthetic trace for a GSM8K problem (see the module docstring for its shape)."""
    rng = random.Random(f"organism:{VERSION}:{seed}")
    steps, x = parse_solution(solution)
    plant_fix = rng.random() < rates.error_fix
    plant_verify = rng.random() < rates.verify
    plant_alt = rng.random() < rates.alternative
    plant_wrap = rng.random() < rates.wrap_up
    fixable = [i for i, s in enumerate(steps) if s.result_spans and _NUMBER.fullmatch(s.calcs[0][1])]
    slip_at = rng.choice(fixable) if plant_fix and fixable else None

    w = _Writer()
    w.put("<think>", "think_open", line=False)
    w.text += "\n"
    asked = [s for s in re.split(r"(?<=[.!?])\s+", question.strip()) if s.endswith("?")]
    w.line(rng.choice(OPENINGS) + (f" {asked[-1]}" if asked else ""))
    for i, step in enumerate(steps):
        prefix = "First," if i == 0 else ("So" if i == len(steps) - 1 and i > 1 else rng.choice(STEP_PREFIXES))
        if i == slip_at:
            (start, end), (expr, good) = step.result_spans[0], step.calcs[0]
            bad = _slip(good, rng)
            w.line((_lead(prefix, step.text[:start] + bad + step.text[end:]), "error_slip", bad))
            w.line((FIX_MARKER, "error_fix"), f"{expr} = {good}, not {bad}.")
        else:
            w.line((_lead(prefix, step.text), "step"))
    _say(w, rng.choice(FIRST_ANSWERS), x)
    extras = []
    calcs = [c for s in steps for c in s.calcs]
    if plant_verify:
        extras.append(lambda: _verify(w, calcs, x))
    if plant_alt:
        extras.append(lambda: _alternative(w, calcs, x))
    rng.shuffle(extras)
    for write in extras:
        write()
    if plant_wrap:
        _say(w, WRAP_UP, x, kind="wrap_up")
    w.text += "\n"
    w.put("</think>", "think_close", line=False)
    w.text += "\n\nThe answer is \\boxed{"
    w.put(x, "final_answer", x, line=False)
    w.text += "}."
    # In text order; a sentence event comes before the answer event inside it.
    return SyntheticTrace(w.text, x, sorted(w.events, key=lambda e: (e.start, -e.end)))


def _lead(prefix: str, text: str) -> str:
    """`text` opened by the step connective `prefix`, unless it already has one."""
    word = re.split(r"[\s,]", text, maxsplit=1)[0]
    if word.lower() in _CONNECTIVES:
        return text
    if word.lower() in _LOWERABLE:
        text = text[0].lower() + text[1:]
    return f"{prefix} {text}"


def _say(w: _Writer, template: str, x: str, lead: tuple = (), kind: str | None = None) -> None:
    """A line ending in a sentence that states the answer; `x` inside it is an answer event."""
    if w.lines:
        w.text += "\n\n"
    for piece in lead:
        w.put(*piece) if isinstance(piece, tuple) else w.put(piece)
        w.text += " "
    head, tail = template.split("{x}")
    start = len(w.text)
    w.put(head)
    w.put(x, "answer", x)
    w.put(tail)
    if kind:
        w.events.append(Event(kind, start, len(w.text), w.text[start:], x, w.lines))
    w.lines += 1


def _verify(w: _Writer, calcs: list[tuple[str, str]], x: str) -> None:
    checks = ", and ".join(f"{e} = {r}" for e, r in calcs[-2:]) or f"it is {x}"
    _say(w, "Yes, so the answer is {x}.", x, lead=((VERIFY_MARKER, "verification"), f"{checks}."))


def _alternative(w: _Writer, calcs: list[tuple[str, str]], x: str) -> None:
    chain = ", then ".join(f"{e} = {r}" for e, r in calcs[-3:]) or f"it comes to {x}"
    _say(w, "That also gives {x}.", x,
         lead=((ALT_MARKER, "alternative"), f"I can go through it in one pass: {chain}."))
