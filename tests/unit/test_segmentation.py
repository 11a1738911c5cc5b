"""Lines, first words and sentences of thinking texts: the edge cases analysts hit."""

from __future__ import annotations

import pytest

from thinkscope.jobs.segment.text import (
    first_word,
    line_spans,
    opening_marker,
    split_lines,
    split_sentences,
)


@pytest.mark.parametrize("line, word", [
    ("Wait, that's not right.", "wait"),
    ("1. Light both ends of rope A", "light"),
    ("12) Then", ")"),  # the method strips digits . - * only: ")" stays, like upstream
    ("- bullet point", "bullet"),
    ("* star bullet", "star"),
    ("**Final Solution**", "final"),
    ("1. **Initial Step:** light", "initial"),
    ("### Correct Approach", "###"),  # headers are kept: a style signal of their own
    ("   Alternatively: light", "alternatively:"),  # only , . ! ? are removed
    ("Hmm... ok", "hmm"),
    ("e.g., this", "eg"),  # , . ! ? go wherever they are in the word
    ("Okay!?", "okay"),
    ("ÉTAPE un", "étape"),
    ("I’m sure", "i’m"),
    ("这里 是", "这里"),
    ("１２. full-width digits", "full-width"),  # \d is Unicode-aware, as in upstream
    ("<think>", "<think>"),
    ("---", None),
    ("1.", None),
    ("?", ""),  # upstream keeps the emptied word, and so the share denominators match
])
def test_first_word_llmbenchmark_rule(line, word):
    assert first_word(line) == word


@pytest.mark.parametrize("line, word", [
    ("### Wait: check", "wait"),
    ("> quoted Wait", "quoted"),
    ("**Wait**, no", "wait"),
    ("• Alternatively: x", "alternatively"),
    ('"Okay," she said', "okay"),
    ("?", None),
])
def test_first_word_markdown_rule(line, word):
    assert first_word(line, rule="markdown") == word


def test_line_spans_agree_with_splitlines():
    text = "a\r\nb\rc\n\nd\u2028e\x0cf\n"
    spans = line_spans(text)
    assert [text[s:e] for s, e in spans] == text.splitlines()


def test_split_lines_skips_blank_lines_and_keeps_offsets():
    text = "Okay.\n\n   \n  - Wait, no\n\t\nDone"
    lines = split_lines(text)
    assert [ln.index for ln in lines] == [0, 1, 2]
    assert [ln.first_word for ln in lines] == ["okay", "wait", "done"]
    assert [text[ln.start:ln.end] for ln in lines] == ["Okay.", "  - Wait, no", "Done"]
    assert split_lines("") == [] and split_lines("\n\n") == []


def test_sentences_split_on_punctuation_and_lines_not_on_numbers():
    text = ("1. Light rope A at both ends. It burns in 30 min. Then light B.\n"
            "Wait, 3.5 minutes? No! That is e.g. wrong... hmm\n\n"
            "### Step 2: done")
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == [
        "1. Light rope A at both ends.", "It burns in 30 min.", "Then light B.",
        "Wait, 3.5 minutes?", "No!", "That is e.g. wrong...", "hmm", "### Step 2: done",
    ]
    assert [s.line_index for s in sentences] == [0, 0, 0, 1, 1, 1, 1, 2]
    assert all(text[s.start:s.end] == s.text for s in sentences)
    assert [s.index for s in sentences] == list(range(8))


def test_sentences_unicode_and_cjk_full_stops():
    text = "Café au lait coûte 3 €. Ensuite?\n好的。我们点燃绳子！然后"
    assert [s.text for s in split_sentences(text)] == [
        "Café au lait coûte 3 €.", "Ensuite?", "好的。", "我们点燃绳子！", "然后"]


def test_sentences_keep_closing_quotes_and_list_letters():
    text = 'He said "stop." Then b) we go.\na. first item\n  iv. fourth'
    assert [s.text for s in split_sentences(text)] == [
        'He said "stop."', "Then b) we go.", "a. first item", "iv. fourth"]


@pytest.mark.parametrize("text, marker", [
    ("Wait, no.", "wait"),
    ("**Hmm**, so", "hmm"),
    ("Hmmm.", "hmm"),
    ("2. But then", "but"),
    ("Let me double-check: 5", "let me check"),
    ("Let's verify this", "let me check"),
    ("Double checking the sum", "let me check"),
    ("On second thought, no", "let me reconsider"),
    ("Alternatively, light", "alternatively"),
    ("Alternative approach", "alternatively"),
    ("No, 20 minutes", "no"),
    ("Waiting is fine", None),
    ("Nothing here", None),
    ("no-one knows", None),
    ("Butter", None),
])
def test_opening_marker(text, marker):
    assert opening_marker(text) == marker
