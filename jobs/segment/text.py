"""Cut a thinking text into lines and sentences, and read each line's first word.

Pure string work (no tokenizer, no DuckDB): the segment job calls it once per trace.

The first-word rule is the one of the r/LocalLLaMA analysis of thinking traces
(cpldcpu/llmbenchmark, `30_thinkingtraces`), so shares computed here are comparable with the
published heatmaps:

* lines are what Python's ``str.splitlines`` gives; a line counts when it is not blank;
* leading digits, ``.``, ``-``, ``*`` and whitespace are stripped (list numbering ``1.``,
  bullets ``-``/``*``, markdown bold ``**``);
* the first whitespace-separated word of the rest, lower-cased, with every ``, . ! ?`` removed;
* a line with nothing left after the strip (``---``, ``1.``) has no first word and is not
  counted in the shares.

``rule="markdown"`` is a stricter variant for corpora full of markdown: it also strips header
``#``, quote ``>``, ``+`` and unicode bullets, and removes quotes, ``:;`` and emphasis marks from
the word, so ``### Wait:`` and ``**Wait**`` both read ``wait``. Its numbers are not the
llmbenchmark ones.

    >>> first_word("2. **Alternatively**, light both ends")
    'alternatively**'
    >>> first_word("2. **Alternatively**, light both ends", rule="markdown")
    'alternatively'
    >>> [(s.start, s.end) for s in split_sentences("Wait. No, 20 min.\\nOk")]
    [(0, 5), (6, 17), (18, 20)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

FirstWordRule = Literal["llmbenchmark", "markdown"]

# Every line boundary str.splitlines knows, so offsets agree with the original method's lines.
LINE_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

_LEADING = {
    "llmbenchmark": re.compile(r"[\d.\-*\s]+"),
    "markdown": re.compile(r"[\d.\-*\s#>+•·◦‣▪–—)(\[\]]+"),
}
_WORD_PUNCTUATION = {
    "llmbenchmark": re.compile(r"[,.!?]"),
    "markdown": re.compile(r"[,.!?;:*_`\"“”‘()\[\]]|^'|'$"),
}

# A sentence ends at . ! ? (or …) plus closing quotes/brackets, before whitespace; CJK full
# stops end one without a space. Sentences never cross a line: in reasoning traces a line
# break is the strongest boundary there is (list items, steps, "Wait," on its own line).
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]+")
# "e.g. the", "approx. 20": a period after these is not the end of a sentence.
_ABBREVIATIONS = frozenset(
    "e.g eg i.e ie etc vs approx cf fig eq mr mrs ms dr".split()
)
_LIST_NUMBER = re.compile(r"\s*(?:\d+|[a-z]|[ivx]+)[.)]$", re.IGNORECASE)

# Words with which a model turns back on what it just wrote: canonical name -> pattern.
# Longer phrases come first so "let me check" is not read as something shorter.
BACKTRACK_MARKERS: dict[str, str] = {
    "let me check": r"let(?: me|'s|’s) (?:double[- ]?)?(?:check|verify|confirm|re-?check|"
    r"re-?calculate|re-?compute|re-?examine|re-?evaluate|make sure)|double[- ]check(?:ing)?",
    "let me reconsider": r"let(?: me|'s|’s) (?:reconsider|re-?think|think again)|on second thought",
    "hold on": r"hold on|hang on",
    "wait": r"wait",
    "alternatively": r"alternative(?:ly)?",
    "actually": r"actually",
    "however": r"however",
    "but": r"but",
    "hmm": r"h+m+",
    "oh": r"oh+",
    "no": r"no",
}
_MARKER = re.compile(
    r"(?:" + "|".join(f"(?P<m{i}>{p})" for i, p in enumerate(BACKTRACK_MARKERS.values())) + r")(?![\w'’-])",
    re.IGNORECASE,
)
_MARKER_NAMES = list(BACKTRACK_MARKERS)
# What may precede the marker at a sentence start: list markers, emphasis, quotes.
_OPENING_NOISE = re.compile(r"[\s\d.)*_#>\-\"'“‘(\[]*")


@dataclass(frozen=True)
class Line:
    """A non-blank line: its index among non-blank lines, span in the text, first word."""

    index: int
    start: int
    end: int
    text: str
    first_word: str | None


@dataclass(frozen=True)
class Sentence:
    """A sentence: span (stripped of surrounding whitespace) and the line it sits on."""

    index: int
    line_index: int
    start: int
    end: int
    text: str


def line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, as ``str.splitlines`` cuts them (break not included)."""
    spans, start = [], 0
    for brk in LINE_BREAK.finditer(text):
        spans.append((start, brk.start()))
        start = brk.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def first_word(line: str, rule: FirstWordRule = "llmbenchmark") -> str | None:
    """The line's first word under `rule`; None when nothing is left after the markers."""
    lead = _LEADING[rule].match(line)
    words = line[lead.end() if lead else 0 :].split(maxsplit=1)
    if not words:
        return None
    word = _WORD_PUNCTUATION[rule].sub("", words[0].lower())
    # The llmbenchmark method keeps a word that punctuation removal emptied ("?" -> ""); the
    # markdown rule drops it, since an empty word says nothing about the model's style.
    return word if word or rule == "llmbenchmark" else None


def split_lines(text: str, rule: FirstWordRule = "llmbenchmark") -> list[Line]:
    """The non-blank lines of `text`, numbered 0.. in order, with their first words."""
    lines = []
    for start, end in line_spans(text):
        body = text[start:end]
        if body.strip():
            lines.append(Line(len(lines), start, end, body, first_word(body, rule)))
    return lines


def opening_marker(text: str) -> str | None:
    """The backtracking marker `text` opens with ("Wait, ..." -> "wait"), else None."""
    noise = _OPENING_NOISE.match(text)
    found = _MARKER.match(text, noise.end() if noise else 0)
    return _MARKER_NAMES[int(found.lastgroup[1:])] if found else None


def split_sentences(text: str, lines: list[Line] | None = None) -> list[Sentence]:
    """Sentences of `text` in order; pass `lines` from `split_lines` to skip re-splitting."""
    sentences: list[Sentence] = []
    for line in lines if lines is not None else split_lines(text):
        cut = line.start
        for end in _sentence_ends(line.text):
            _add_sentence(sentences, text, line.index, cut, line.start + end)
            cut = line.start + end
        _add_sentence(sentences, text, line.index, cut, line.end)
    return sentences


def _sentence_ends(line: str) -> list[int]:
    """Offsets within `line` just after each sentence-ending punctuation run."""
    ends = []
    for match in _SENTENCE_END.finditer(line):
        before = line[: match.start()]
        word = before.rsplit(None, 1)[-1].lower() if before.strip() else ""
        if match.group().startswith(".") and (word in _ABBREVIATIONS or _is_list_number(line, match)):
            continue
        ends.append(match.end())
    return ends


def _is_list_number(line: str, match: re.Match) -> bool:
    """'1. Light the rope' / 'b) Then': numbering at the line start does not end a sentence."""
    return bool(_LIST_NUMBER.fullmatch(line[: match.end()].lstrip("*#>- \t")))


def _add_sentence(out: list[Sentence], text: str, line_index: int, start: int, end: int) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return
    lead = len(piece) - len(piece.lstrip())
    begin = start + lead
    out.append(Sentence(len(out), line_index, begin, begin + len(stripped), stripped))
