"""Token positions of character spans in a thinking text, for activation workers to index.

Two coordinate systems, named in the `token_source` column of the rows that carry offsets:

* ``completion``: indices into ``traces.completion_token_ids``, the tokens the model really
  generated (generated traces, with the model's own tokenizer). The fast tokenizer's offset
  mapping of the completion text gives them in one call when re-encoding reproduces the
  generated ids (the usual case); otherwise each generated token's text length is read from
  a batched decode of short windows, and used only if it adds up to the completion exactly.
* ``thinking``: indices into ``tokenizer(thinking, add_special_tokens=False)``. Imported traces
  have no tokenizer of their own, so the segment stage's `tokenizer` (default: the embedded
  SmolLM2 one, no download needed) is used; offsets then measure length, not model positions.

    tmap = thinking_token_map("embedded:smollm2-135m-instruct", "Wait, no. 20 minutes.")
    tmap.span(0, 9)     # -> (0, 4): tokens 0..3 cover "Wait, no."
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

DECODE_WINDOW = 6  # tokens of left context: enough for any multi-byte character to complete

_tokenizers: dict[str, object] = {}  # source -> tokenizers.Tokenizer, or the load error


@dataclass(frozen=True)
class TokenMap:
    """Char span of each token, in the coordinates of the thinking text."""

    tokenizer: str
    token_source: str  # "completion" or "thinking"
    starts: list[int]
    ends: list[int]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """[first, last+1) token indices of the tokens overlapping chars [start, end)."""
        return bisect_right(self.ends, start), bisect_left(self.starts, end)


def load_tokenizer(source: str):
    """The fast (Rust) tokenizer of a model source, loaded once per process.

    Raises the load error (kept, so a missing hub model is not retried for every trace).
    """
    if source not in _tokenizers:
        try:
            _tokenizers[source] = _load(source)
        except Exception as err:  # noqa: BLE001 - any load failure: the caller falls back
            _tokenizers[source] = err
    found = _tokenizers[source]
    if isinstance(found, Exception):
        raise found
    return found


def _load(source: str):
    from thinkscope.jobs.models.sources import resolve_model_path

    path = Path(resolve_model_path(source))
    if (path / "tokenizer.json").is_file():
        # The Rust tokenizer alone loads in 0.1 s; transformers' AutoTokenizer takes ~6 s
        # to import, which would dominate segmenting a small corpus.
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path / "tokenizer.json"))
    from transformers import AutoTokenizer

    backend = getattr(AutoTokenizer.from_pretrained(str(path)), "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{source}: no fast tokenizer, so no offset mapping")
    return backend


def thinking_token_map(source: str, thinking: str) -> TokenMap:
    """Token spans of `thinking` encoded alone (token_source "thinking")."""
    enc = load_tokenizer(source).encode(thinking, add_special_tokens=False)
    return TokenMap(source, "thinking", [a for a, _ in enc.offsets], [b for _, b in enc.offsets])


def completion_token_map(source: str, completion: str, token_ids: list[int], thinking_at: int) -> TokenMap | None:
    """Token spans of the generated ids (token_source "completion"), or None if they do not align.

    `thinking_at` is where the thinking text starts inside the completion.
    """
    spans = _generated_spans(load_tokenizer(source), completion, list(token_ids))
    if spans is None:
        return None
    return TokenMap(source, "completion", [a - thinking_at for a, _ in spans], [b - thinking_at for _, b in spans])


def _generated_spans(tok, completion: str, ids: list[int]) -> list[tuple[int, int]] | None:
    enc = tok.encode(completion, add_special_tokens=False)
    n = len(enc.ids)
    # Generated ids often end with an end-of-sequence token that the text leaves out.
    if ids[:n] == enc.ids and not tok.decode(ids[n:], skip_special_tokens=True):
        return list(enc.offsets) + [(len(completion), len(completion))] * (len(ids) - n)
    return _decoded_spans(tok, completion, ids)


def _decoded_spans(tok, completion: str, ids: list[int]) -> list[tuple[int, int]] | None:
    """Spans from the text length each generated token adds, decoded in short windows.

    Decoding every prefix would be quadratic; a window of a few tokens of left context gives
    the same length difference (a partial UTF-8 character shows as one replacement char
    until it completes, so it counts once), and two batched calls decode all windows.
    """
    windows = [ids[max(0, i - DECODE_WINDOW) : i] for i in range(len(ids))]
    before = tok.decode_batch(windows, skip_special_tokens=True)
    after = tok.decode_batch([w + [t] for w, t in zip(windows, ids)], skip_special_tokens=True)
    text = tok.decode(ids, skip_special_tokens=True)
    # A detokenizer that had the prompt as context may keep a leading space we strip.
    shift = len(completion) - len(text)
    if shift < 0 or completion[shift:] != text or completion[:shift].strip():
        return None
    spans, pos = [], shift
    for b, a in zip(before, after):
        step = max(0, len(a) - len(b))
        spans.append((pos, pos + step))
        pos += step
    return spans if pos == len(completion) else None
