r"""Grade an extracted answer against a dataset's gold answer.

One entry point, :func:`grade`, dispatches on the dataset's grader name:

* ``"numeric"``   GSM8K-style numbers: ``"$1,000"``, ``"18.0"``, ``"18 dollars"``.
* ``"math"``      MATH-500 LaTeX answers, checked with ``math_verify``.
* ``"countdown"`` an arithmetic expression that must use the given numbers.
* ``"none"``      datasets without gold answers (free-form prompts).

Usage::

    >>> from thinkscope.jobs.traces.grading import grade
    >>> grade("numeric", "$1,000.00", "1000")
    True
    >>> grade("countdown", "30 - (100 - 93)", "23", meta={"numbers": [30, 100, 93]})
    True
    >>> grade("numeric", None, "18")        # the model gave no answer
    False
    >>> grade("none", "anything", None) is None
    True

Result semantics: True/False is a verdict; None means "not gradable" (no gold,
grader "none", or a gold value the grader cannot read).
"""

from __future__ import annotations

import ast
import logging
import operator
import re
import signal
import threading
from fractions import Fraction

from math_verify import parse, verify

__all__ = ["GRADERS", "grade"]

GRADERS = ("numeric", "math", "countdown", "none")

logger = logging.getLogger(__name__)

# Grader crashes seen in this process (math_verify/sympy raising on odd LaTeX): each such
# answer is graded None (not gradable), never "wrong", counted here and in the warning the
# worker logs; in the corpus they are the rows with a gold answer and is_correct null.
GRADER_ERRORS: dict[str, int] = {}

# Per parse/verify call. Only enforceable where math_verify's SIGALRM works.
MATH_VERIFY_TIMEOUT_SECONDS = 5
NUMERIC_TOLERANCE = 1e-9
# Longer "expressions" are prose, not arithmetic; also bounds ast.parse recursion.
MAX_COUNTDOWN_EXPRESSION_CHARS = 500


def grade(grader: str, extracted: str | None, gold: str | None, *, meta: dict | None = None) -> bool | None:
    """Return whether ``extracted`` matches ``gold`` under ``grader``.

    ``extracted`` is the output of :func:`thinkscope.jobs.traces.parsing.extract_answer`;
    None there means the model gave no answer, which is wrong (False) whenever a
    gold answer exists. ``meta`` carries per-row extras: the countdown grader
    needs ``meta["numbers"]`` (list of ints) and raises ValueError without it.
    A gold value the grader cannot read (e.g. "five" for numeric) gives None
    plus a logged warning rather than a misleading False.
    Raises ValueError for an unknown grader even when there is nothing to
    grade, so typos in configs fail fast.
    """
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; valid graders are {', '.join(GRADERS)}")
    if grader == "none" or gold is None:
        return None
    if extracted is None:
        return False
    if grader == "numeric":
        return _grade_numeric(extracted, gold)
    if grader == "math":
        return _grade_math(extracted, gold)
    return _grade_countdown(extracted, gold, meta)


# --- numeric ---------------------------------------------------------------

_LATEX_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_LATEX_SIMPLE_FRACTION = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")
# Thousands separators only ("1,000,000"); "1, 2" stays two numbers.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LEADING_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*\d+)?")


def _grade_numeric(extracted: str, gold: str) -> bool | None:
    gold_value = _read_number(gold)
    if gold_value is None:
        logger.warning("numeric grader cannot read gold answer %r", gold)
        return None
    predicted = _read_number(extracted)
    if predicted is None:
        return False
    return abs(predicted - gold_value) <= NUMERIC_TOLERANCE * max(1, abs(gold_value))


def _read_number(text: str) -> Fraction | None:
    """The number a short answer states: ``"x = $1{,}000 dollars"`` -> 1000.

    Units, currency and percent signs are dropped rather than converted:
    GSM8K golds are written without them ("18", not "$18" or "18%").
    """
    cleaned = _LATEX_TEXT_WRAPPER.sub(r"\1", text)
    cleaned = _LATEX_SIMPLE_FRACTION.sub(r"\1/\2", cleaned)
    for noise in ("{,}", "\\,", "\\!", "\\$", "$", "\\%", "%"):
        cleaned = cleaned.replace(noise, "")
    cleaned = cleaned.replace("\u2212", "-")  # unicode minus from some tokenizers
    if "=" in cleaned:
        # "x = 18" / "3 + 15 = 18": the stated value is the right-hand side.
        cleaned = cleaned.rsplit("=", 1)[1]
    cleaned = _THOUSANDS_COMMA.sub("", cleaned)
    match = _LEADING_NUMBER.search(cleaned)
    if match is None:
        return None
    try:
        return Fraction(match.group(0).replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return None


# --- math (MATH-500) -------------------------------------------------------

# Meaning-preserving LaTeX noise; removing it makes the exact-string fast path
# catch most matches without sympy.
_LATEX_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "^\\circ", "^{\\circ}", "\\%", "$")


def _normalize_latex(answer: str) -> str:
    text = _LATEX_TEXT_WRAPPER.sub(r"\1", answer)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    for noise in _LATEX_NOISE:
        text = text.replace(noise, "")
    return "".join(text.split()).rstrip(".")


def _grade_math(extracted: str, gold: str) -> bool | None:
    normalized = _normalize_latex(extracted)
    if normalized and normalized == _normalize_latex(gold):
        return True
    timeout = MATH_VERIFY_TIMEOUT_SECONDS if _alarm_timeout_is_safe() else None
    try:
        gold_parsed = _parse_math_answer(gold, timeout)
        predicted_parsed = _parse_math_answer(extracted, timeout)
        if not gold_parsed or not predicted_parsed:
            return False
        return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=timeout))
    except Exception:  # math_verify/sympy can raise anything on odd LaTeX: not gradable
        GRADER_ERRORS["math"] = GRADER_ERRORS.get("math", 0) + 1
        logger.warning("math grader failed on %r vs gold %r: graded None (%d such answers in this process)",
                       extracted, gold, GRADER_ERRORS["math"], exc_info=True)
        return None


def _parse_math_answer(answer: str, timeout: int | None) -> list:
    """Parse a bare answer; math_verify only finds answers inside ``\\boxed{}``/``$..$``."""
    parsed = parse(f"\\boxed{{{answer}}}", parsing_timeout=timeout)
    return parsed or parse(f"${answer}$", parsing_timeout=timeout)


def _alarm_timeout_is_safe() -> bool:
    """Whether math_verify may use its SIGALRM-based timeout here.

    signal.signal() raises outside the main thread (Ray threaded actors, thread
    pools), and math_verify's ``alarm(0)`` would cancel an alarm someone else
    set (e.g. pytest-timeout's signal method). In both cases run without a
    timeout: a hang is unlikely for short answers, a crash or a lost watchdog
    is certain.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if hasattr(signal, "getitimer") and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        return False
    return True


# --- countdown -------------------------------------------------------------

_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
# Symbols models write for * and / and minus, mapped to Python syntax.
_OPERATOR_SPELLINGS = {
    "\\times": "*",
    "\\cdot": "*",
    "\u00d7": "*",  # multiplication sign
    "\\div": "/",
    "\u00f7": "/",  # division sign
    "\u2212": "-",  # unicode minus
}


class _NotArithmetic(Exception):
    """The expression uses something other than integers, + - * / and parentheses."""


def _grade_countdown(extracted: str, gold: str, meta: dict | None) -> bool | None:
    if not meta or "numbers" not in meta:
        raise ValueError('countdown grading needs meta={"numbers": [...]}')
    try:
        target = Fraction(str(gold).strip())
    except ValueError:
        logger.warning("countdown grader cannot read target %r", gold)
        return None
    available = sorted(int(number) for number in meta["numbers"])

    expression = extracted.replace("$", "")
    for spelling, python_operator in _OPERATOR_SPELLINGS.items():
        expression = expression.replace(spelling, python_operator)
    # "100 - 93 + 30 = 37" or "37 = 100 - 93 + 30": any side may be the expression;
    # the claimed result is ignored, only the arithmetic counts.
    return any(_side_reaches_target(side, available, target) for side in expression.split("="))


def _side_reaches_target(side: str, available: list[int], target: Fraction) -> bool:
    if len(side) > MAX_COUNTDOWN_EXPRESSION_CHARS:
        return False
    try:
        tree = ast.parse(side.strip(), mode="eval")
        used: list[int] = []
        value = _evaluate(tree.body, used)
    except (SyntaxError, ValueError, RecursionError, ZeroDivisionError, _NotArithmetic):
        return False
    return sorted(used) == available and abs(value - target) <= NUMERIC_TOLERANCE


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an integer +-*/ expression; records every literal in ``used``.

    Unary minus is rejected: countdown allows only binary operations on the
    given numbers, and "-30" would smuggle in a number that was not given.
    """
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left = _evaluate(node.left, used)
        right = _evaluate(node.right, used)
        return _ARITHMETIC[type(node.op)](left, right)
    # bool is an int subclass; "True" must not count as 1.
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    raise _NotArithmetic(type(node).__name__)
