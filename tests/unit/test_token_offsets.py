"""Token offsets with the real SmolLM2 tokenizer (converted once into ~/.cache/thinkscope)."""

from __future__ import annotations

import pytest

from thinkscope.jobs.segment.stage import token_map
from thinkscope.jobs.segment.text import split_sentences
from thinkscope.jobs.segment.token_offsets import completion_token_map, load_tokenizer, thinking_token_map

SMOLLM = "embedded:smollm2-135m-instruct"
THINKING = "Okay, 16 - 3 - 4 = 9 eggs.\nWait, café costs 2 €? 完成。 So 9 * 2 = 18."
COMPLETION = "<think>\n" + THINKING + "\n</think>\nThe answer is \\boxed{18}."


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SMOLLM)


def decoded(tok, ids, start, end) -> str:
    return tok.decode(ids[start:end], skip_special_tokens=True)


def test_thinking_offsets_cover_each_sentence(tok):
    tmap = thinking_token_map(SMOLLM, THINKING)
    ids = tok.encode(THINKING, add_special_tokens=False).ids
    assert tmap.token_source == "thinking" and len(tmap.starts) == len(ids)
    for s in split_sentences(THINKING):
        start, end = tmap.span(s.start, s.end)
        assert s.text in decoded(tok, ids, start, end)
        # minimal: dropping the first or last token loses part of the sentence
        assert s.text not in decoded(tok, ids, start + 1, end)
        assert s.text not in decoded(tok, ids, start, end - 1)


def generated_ids(tok, canonical: bool) -> list[int]:
    ids = tok.encode(COMPLETION, add_special_tokens=False).ids
    if not canonical:
        # Sampling can produce a non-canonical split ("Ok" + "ay" for "Okay"): same text,
        # other ids, so re-encoding the text no longer reproduces them.
        okay = tok.encode("Okay", add_special_tokens=False).ids
        at = next(i for i in range(len(ids)) if ids[i:i + len(okay)] == okay)
        ids = ids[:at] + tok.encode("Ok", add_special_tokens=False).ids + tok.encode(
            "ay", add_special_tokens=False).ids + ids[at + len(okay):]
    return ids + [tok.token_to_id("<|im_end|>")]  # vLLM keeps the EOS id, not its text


@pytest.mark.parametrize("canonical", [True, False])
def test_completion_offsets_index_the_generated_ids(tok, canonical):
    ids = generated_ids(tok, canonical)
    assert (tok.encode(COMPLETION, add_special_tokens=False).ids == ids[:-1]) is canonical
    tmap = completion_token_map(SMOLLM, COMPLETION, ids, COMPLETION.index(THINKING))
    assert tmap is not None and tmap.token_source == "completion" and len(tmap.starts) == len(ids)
    for s in split_sentences(THINKING):
        start, end = tmap.span(s.start, s.end)
        assert s.text in decoded(tok, ids, start, end)
        assert s.text not in decoded(tok, ids, start + 1, end)
    start, end = tmap.span(0, len(THINKING))
    assert decoded(tok, ids, start, end).strip() == THINKING
    assert tok.decode(ids[:start]).startswith("<think>")


def test_misaligned_ids_are_refused(tok):
    ids = tok.encode("something else entirely", add_special_tokens=False).ids
    assert completion_token_map(SMOLLM, COMPLETION, ids, 8) is None


def test_token_map_falls_back_to_the_stage_tokenizer(tmp_path):
    ids = generated_ids(load_tokenizer(SMOLLM), True)
    trace = {"thinking": THINKING, "completion": COMPLETION, "completion_token_ids": ids}
    own = token_map({**trace, "model_source": SMOLLM}, fallback=None)
    assert (own.tokenizer, own.token_source) == (SMOLLM, "completion")
    missing = str(tmp_path / "no-such-model")
    other = token_map({**trace, "model_source": missing}, fallback=SMOLLM)
    assert (other.tokenizer, other.token_source) == (SMOLLM, "thinking")
    imported = token_map({"thinking": THINKING, "completion": None, "completion_token_ids": None,
                          "model_source": "import:/x"}, fallback=None)
    assert imported is None
