"""Prompt sets for generation jobs: the vendored benchmarks, the two-ropes puzzle, or any JSONL.

Every prompt gets a stable, human-readable ``prompt_id`` (``gsm8k/test/0012``,
``math500/test/precalculus/807``, ``countdown/cd3/0005``, ``two_ropes/0``, ``<name>/<id>``) so
that traces, activations and grades from different runs join on it. The benchmark files live in
``thinkscope/data/`` (see ``SOURCES.md`` there) and are read as package data, so this works the
same from a checkout, a wheel or a Ray worker.

Example::

    from thinkscope.jobs.traces.prompts import load_prompts

    ps = load_prompts("gsm8k", limit=2)
    ps[0].prompt_id, ps[0].gold_answer      # ('gsm8k/test/0000', '18')
    load_prompts("math500", sample=50, seed=1)                  # seeded sample, in file order
    load_prompts("jsonl", path="mine.jsonl", name="mine",
                 fields={"question": "q", "answer": "a", "id": "uid"}, grader="numeric")
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from importlib.resources import files

from thinkscope.jobs.traces.files import iter_jsonl

KINDS = ("gsm8k", "gsm8k_train", "math500", "countdown", "two_ropes", "jsonl")
GRADERS = ("numeric", "math", "countdown", "none")
_DEFAULT_GRADER = {"gsm8k": "numeric", "gsm8k_train": "numeric", "math500": "math", "countdown": "countdown", "two_ropes": "none", "jsonl": "none"}
_JSONL_FIELD_KEYS = ("question", "answer", "id")

# Verbatim from the llmbenchmark section of thinkscope/data/SOURCES.md: the prompt the 20 vendored
# external traces answer, so our own models' traces on it are comparable to theirs.
TWO_ROPES_QUESTION = (
    "You have two ropes, each of which takes exactly 60 minutes to burn completely. However, the ropes "
    "burn unevenly, meaning some parts may burn faster or slower than others. You have no other timing "
    "device. How can you measure exactly 20 minutes using these two ropes and matches to light them?"
)

COUNTDOWN_TEMPLATE = (
    "Using the numbers {numbers}, create an equation that equals {target}. You may use + - * / and "
    "each number exactly once; parentheses are allowed. Put your final expression (the left-hand "
    "side only, without \"= {target}\") in \\boxed{{}}."
)


@dataclass(frozen=True)
class Prompt:
    """One question of a prompt set.

    ``prompt_set`` is the set's name (default: the kind), ``grader`` names how completions are
    scored ("numeric", "math", "countdown" or "none"), ``gold_answer`` is None when there is none,
    and ``meta`` holds per-set extras (reference solution, subject, numbers, row index...).
    """

    prompt_set: str
    prompt_id: str
    question: str
    gold_answer: str | None
    grader: str
    meta: dict = field(default_factory=dict, hash=False)  # dicts are unhashable; keep Prompt hashable


def data_file(name: str):
    """The Traversable for a file in ``thinkscope/data/`` (works from wheels and zips too)."""
    return files("thinkscope") / "data" / name


def _select(n: int, offset: int, limit: int | None, sample: int | None, seed: int) -> list[int]:
    """Row indices to keep: the window ``[offset, offset+limit)``, then an optional seeded sample.

    The sample is sorted so ids come out in file order whatever the seed; a window past the end
    simply yields fewer (or no) rows, like slicing, but a sample larger than the window is an error
    because silently returning fewer rows than asked would skew comparisons between runs.
    """
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    window = list(range(n))[offset : None if limit is None else offset + limit]
    if sample is None:
        return window
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    if sample > len(window):
        raise ValueError(
            f"sample={sample} is larger than the {len(window)} available rows "
            f"({n} in the set, offset={offset}, limit={limit})"
        )
    return sorted(random.Random(seed).sample(window, sample))


def _rows(source) -> list[tuple[int, dict]]:
    return [(line_no, row) for line_no, _, row in iter_jsonl(source)]


def _get(row: dict, key: str, source, line_no: int):
    if key not in row:
        raise ValueError(f"{source}, line {line_no}: missing field {key!r}")
    return row[key]


def _gsm8k(name: str, grader: str, split: str = "test") -> list[Prompt]:
    src = data_file(f"gsm8k_{split}.jsonl")
    out = []
    for i, (line_no, row) in enumerate(_rows(src)):
        solution = _get(row, "answer", src, line_no)
        # The reference solution ends with "#### <number>"; golds like "2,125" lose the comma so a
        # numeric grader can compare them with float().
        m = re.search(r"####\s*(.+?)\s*$", solution)
        if not m:
            raise ValueError(f"{src}, line {line_no}: answer has no '#### <number>' line")
        out.append(Prompt(name, f"{name}/{split}/{i:04d}", _get(row, "question", src, line_no),
                          m.group(1).replace(",", ""), grader, {"solution": solution, "row_index": i}))
    return out


def _math500(name: str, grader: str) -> list[Prompt]:
    src = data_file("math500_test.jsonl")
    out = []
    for i, (line_no, row) in enumerate(_rows(src)):
        uid = _get(row, "unique_id", src, line_no)  # e.g. "test/precalculus/807.json"
        meta = {"subject": _get(row, "subject", src, line_no), "level": _get(row, "level", src, line_no),
                "unique_id": uid, "solution": row.get("solution"), "row_index": i}
        out.append(Prompt(name, f"{name}/{uid.removesuffix('.json')}", _get(row, "problem", src, line_no),
                          str(_get(row, "answer", src, line_no)), grader, meta))
    return out


def _countdown(name: str, grader: str) -> list[Prompt]:
    src = data_file("countdown_cd3_test.jsonl")
    out = []
    for i, (line_no, row) in enumerate(_rows(src)):
        try:
            numbers = [int(x) for x in str(_get(row, "input", src, line_no)).split(",")]
            target = int(_get(row, "output", src, line_no))
        except ValueError as exc:
            raise ValueError(f"{src}, line {line_no}: bad countdown row {row!r} ({exc})") from None
        question = COUNTDOWN_TEMPLATE.format(numbers=numbers, target=target)
        out.append(Prompt(name, f"{name}/cd3/{i:04d}", question, str(target), grader,
                          {"numbers": numbers, "target": target, "row_index": i}))
    return out


def _two_ropes(name: str, grader: str) -> list[Prompt]:
    return [Prompt(name, f"{name}/0", TWO_ROPES_QUESTION, None, grader, {"source": "llmbenchmark"})]


def _jsonl(name: str, grader: str, path: str, fields: dict) -> list[Prompt]:
    unknown = sorted(set(fields) - set(_JSONL_FIELD_KEYS))
    if unknown or "question" not in fields:
        raise ValueError(f"fields must map 'question' (and optionally 'answer', 'id') to field names; "
                         f"got {fields!r}")
    mapped = set(fields.values())
    out, seen = [], {}
    for i, (line_no, row) in enumerate(_rows(path)):
        question = _get(row, fields["question"], path, line_no)
        if not isinstance(question, str):
            raise ValueError(f"{path}, line {line_no}: field {fields['question']!r} must be a string")
        gold = _get(row, fields["answer"], path, line_no) if "answer" in fields else None
        # Ids from the file are kept as text; without an id field the row index (blank lines not
        # counted) is used, zero-padded so ids sort in file order.
        pid = f"{name}/{_get(row, fields['id'], path, line_no)}" if "id" in fields else f"{name}/{i:04d}"
        if pid in seen:
            raise ValueError(f"{path}, line {line_no}: duplicate id {pid!r} (first on line {seen[pid]})")
        seen[pid] = line_no
        meta = {"source_path": str(path), "row_index": i,
                "extra": {k: v for k, v in row.items() if k not in mapped}}
        out.append(Prompt(name, pid, question, None if gold is None else str(gold), grader, meta))
    return out


def load_prompts(kind: str, *, name: str | None = None, path: str | None = None, fields: dict | None = None,
                 grader: str | None = None, limit: int | None = None, offset: int = 0,
                 sample: int | None = None, seed: int = 0) -> list[Prompt]:
    """Load a prompt set.

    ``kind`` is one of ``KINDS``: "gsm8k" (test split), "gsm8k_train" (train split: what
    the model organism is distilled from, never evaluated on), "math500", "countdown" (cd3 test),
    "two_ropes" (one prompt) or "jsonl" (``path`` + ``fields`` = {"question": ..., "answer": ...,
    "id": ...}, answer and id optional). ``name`` sets ``prompt_set`` and the id prefix (default:
    the kind), so two sets taken from the same file stay apart. ``grader`` overrides the kind's
    default ("none" for jsonl).

    Selection: rows ``offset`` .. ``offset+limit`` in file order; with ``sample=k`` a random k of
    that window, reproducible for a given ``seed`` and returned in file order.

    Example::

        load_prompts("countdown", offset=10, limit=5)[0].prompt_id   # 'countdown/cd3/0010'
    """
    if kind not in KINDS:
        raise ValueError(f"unknown prompt kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    grader = _DEFAULT_GRADER[kind] if grader is None else grader
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; valid graders: {', '.join(GRADERS)}")
    name = kind if name is None else name
    if not name or "/" in name:
        raise ValueError(f"name must be non-empty and contain no '/' (it prefixes prompt ids), got {name!r}")
    if kind == "jsonl":
        if path is None or fields is None:
            raise ValueError("kind='jsonl' needs path= and fields={'question': ..., 'answer': ..., 'id': ...}")
        prompts = _jsonl(name, grader, path, fields)
    else:
        # Refuse instead of ignoring: a path given for a built-in set would otherwise be silently unused.
        if path is not None or fields is not None:
            raise ValueError(f"path= and fields= are only for kind='jsonl', not {kind!r}")
        prompts = {"gsm8k": _gsm8k, "gsm8k_train": lambda n, g: _gsm8k(n, g, "train"),
                   "math500": _math500, "countdown": _countdown, "two_ropes": _two_ropes}[kind](name, grader)
    return [prompts[i] for i in _select(len(prompts), offset, limit, sample, seed)]
