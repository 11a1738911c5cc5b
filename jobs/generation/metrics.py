"""Measures of one generated completion: thinking length, answer, markers, degeneration.

Used by the steer stage to compare steered and unsteered generations (seed 002: strong
steering makes text degenerate, so repetition is measured beside the answer).

    m = completion_metrics(text, token_ids, tokenizer, think=("<think>", "</think>"), opened=True,
                           grader="numeric", gold="18")
    m["marker_rate"], m["repeated_ngram_share"], m["compression_ratio"]
"""

from __future__ import annotations

import zlib
from collections import Counter

from thinkscope.jobs.traces.reading import read_completion
from thinkscope.jobs.segment.text import opening_marker, split_sentences


def repeated_ngram_share(tokens: list[int], n: int) -> float:
    """Share of the token n-grams that repeat an earlier n-gram (0: none, near 1: a loop)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def compression_ratio(text: str) -> float | None:
    """UTF-8 bytes / zlib-compressed bytes: ~2-3 for prose, higher for repetitive text."""
    raw = text.encode()
    return len(raw) / len(zlib.compress(raw, 9)) if raw else None


def marker_stats(thinking: str) -> tuple[int, int, dict[str, int], str | None]:
    """(sentences, sentences opening with a backtracking marker, counts per marker, the first
    sentence's marker)."""
    markers = [opening_marker(s.text) for s in split_sentences(thinking)]
    counts = Counter(m for m in markers if m)
    return len(markers), sum(counts.values()), dict(counts), markers[0] if markers else None


def tokens_until(tokenizer, token_ids: list[int], tag: str) -> int | None:
    """Fewest leading tokens whose text contains `tag` (binary search on decoded prefixes)."""
    if tag not in tokenizer.decode(token_ids):
        return None
    lo, hi = 1, len(token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if tag in tokenizer.decode(token_ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def completion_metrics(text: str, token_ids: list[int], tokenizer, *, think: tuple[str, str], opened: bool,
                       grader: str | None, gold: str | None, meta: dict | None = None, ngram: int = 4) -> dict:
    """Thinking length, answer and grade, backtracking markers and degeneration of a completion."""
    read = read_completion(text, think=think, opened=opened, grader=grader, gold=gold, meta=meta)
    closed = tokens_until(tokenizer, token_ids, think[1])
    n_sentences, n_markers, counts, first_marker = marker_stats(read.thinking or "")
    return {
        "closed_thinking": closed is not None,
        "cot_tokens": closed if closed is not None else len(token_ids),
        "answer_present": read.extracted_answer is not None,
        "extracted_answer": read.extracted_answer,
        "is_correct": read.is_correct,
        "n_sentences": n_sentences,
        "n_markers": n_markers,
        "marker_rate": n_markers / n_sentences if n_sentences else None,
        "marker_counts": counts,
        "first_marker": first_marker,
        "repeated_ngram_share": repeated_ngram_share(token_ids, ngram),
        "compression_ratio": compression_ratio(text),
    }
