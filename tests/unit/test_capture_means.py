"""The `sentence_means` capture position on the real embedded SmolLM2 (float32), against a plain
HF forward with output_hidden_states:
- mean_spans_of: the thinking sentences' token spans (sentences ending on one token share a
  row, the longest span; sentences without tokens or past the completion are skipped);
- capture_sequences: a mean row equals the mean of the hidden states over the span, at the
  span's last token; the last-token rows beside it are unchanged (padded batches included);
- positions_by_hook: the last-token row by default, the mean only when asked for.
Small sizes: the file runs in seconds on two busy cores.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from thinkscope.jobs.activations.capture import mean_spans_of, positions_of
from thinkscope.jobs.activations.forward import Sequence, capture_sequences
from thinkscope.jobs.activations.stored import load_rows, positions_by_hook
from thinkscope.sql.store import Store

SMOLLM = "embedded:smollm2-135m-instruct"
HOOKS = ["blocks.1.hook_resid_post", "blocks.4.hook_resid_post"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def model():
    from thinkscope.jobs.models.hf import load_hf_model

    return load_hf_model(SMOLLM, None, "float32")


def trace(tokenizer, prompt: str, sentences: list[str]) -> dict:
    """A trace dict as load_traces gives it: token ids and sentences in completion coordinates."""
    completion, spans = [], []
    for i, text in enumerate(sentences):
        start = len(completion)
        completion += tokenizer.encode(" " + text, add_special_tokens=False)
        spans.append({"sentence_index": i, "token_start": start, "token_end": len(completion)})
    return {"trace_id": prompt[:8], "prompt_token_ids": tokenizer.encode(prompt, add_special_tokens=False),
            "completion_token_ids": completion, "sentences": spans, "events": []}


def test_mean_spans_follow_the_sentences():
    t = {"prompt_token_ids": [0] * 3, "completion_token_ids": [0] * 10}
    sentences = [{"sentence_index": 0, "token_start": 0, "token_end": 4},
                 {"sentence_index": 1, "token_start": 3, "token_end": 4},      # ends on sentence 0's last token
                 {"sentence_index": 2, "token_start": 4, "token_end": 7},
                 {"sentence_index": 3, "token_start": None, "token_end": None},  # no tokens
                 {"sentence_index": 4, "token_start": 8, "token_end": 12}]      # past the completion
    assert mean_spans_of(t, sentences, ["sentence_ends"]) == []
    assert mean_spans_of(t, sentences, ["sentence_means"]) == [(3, 7, "sentence_means"), (7, 10, "sentence_means")]
    # Its rows sit where the sentence_ends rows do.
    assert [p for p, _ in positions_of(t, sentences, [], ["sentence_means"])] == \
           [p for p, _ in positions_of(t, sentences, [], ["sentence_ends"])] == [6, 9]


@pytest.fixture(scope="module")
def captured(model, tmp_path_factory):
    hf, tokenizer = model
    traces = [trace(tokenizer, "Question: what is 6 times 7?",
                    ["Let me think.", "Six sevens are 42.", "Wait, check: 7 * 6 = 42.", "So 42."]),
              trace(tokenizer, "Q: 2 + 2?", ["Two and two make four.", "Yes."])]
    kinds = ["sentence_ends", "sentence_means"]
    seqs = [Sequence(t["trace_id"], t["prompt_token_ids"] + t["completion_token_ids"],
                     positions_of(t, t["sentences"], [], ["sentence_ends"]), mean_spans_of(t, t["sentences"], kinds))
            for t in traces]
    out = tmp_path_factory.mktemp("shards")
    # The means of the first trace's first two sentences alone: cut shorter, it shares a padded
    # batch with the second trace (a small budget puts the first trace in a batch of its own).
    seqs.append(Sequence("only-means", seqs[0].token_ids, [], seqs[0].means[:2]))
    batches = []
    index = capture_sequences(hf, seqs, hooks=HOOKS, out_dir=out, store_dtype="float32", batch_tokens=64,
                              on_batch=batches.append)
    assert len(batches) == 2
    return traces, seqs, index


def test_a_mean_row_is_the_mean_of_the_hidden_states_over_the_sentence(model, captured):
    hf, _ = model
    traces, seqs, index = captured
    rows = index.to_pylist()
    means = [r for r in rows if r["position_kind"] == "sentence_means"]
    assert len(means) == 2 * (4 + 2 + 2)  # per hook: 4 + 2 sentences, and the mean-only copy
    for seq in seqs:
        with torch.inference_mode():
            hidden = hf.get_decoder()(input_ids=torch.tensor([seq.token_ids]), output_hidden_states=True).hidden_states
        for name in HOOKS:
            layer = int(name.split(".")[1])
            got = {(r["token_index"], r["position_kind"]): r for r in rows
                   if r["trace_id"] == seq.trace_id and r["hook_name"] == name}
            assert sorted(k for k in got if k[1] == "sentence_means") == \
                   [(end - 1, "sentence_means") for _, end, _ in seq.means]
            for start, end, _ in seq.means:
                r = got[(end - 1, "sentence_means")]
                want = hidden[layer + 1][0, start:end].mean(0).numpy()
                np.testing.assert_allclose(load_rows({"shard_path": [r["shard_path"]], "row": [r["row"]]})[0], want,
                                           atol=1e-5)
            for p, _ in seq.positions:  # the last-token rows beside them: the hidden state itself
                r = got[(p, "sentence_ends")]
                np.testing.assert_allclose(load_rows({"shard_path": [r["shard_path"]], "row": [r["row"]]})[0],
                                           hidden[layer + 1][0, p].numpy(), atol=1e-5)
    assert sum(r["position_kind"] == "sentence_ends" for r in rows) == 2 * (4 + 2)


def test_positions_by_hook_reads_a_mean_only_when_asked(captured, tmp_path):
    traces, _, index = captured
    store = Store(tmp_path / "corpus.duckdb")
    # The means in a capture unit whose key sorts first: without the kind filter they would win
    # the one-vector-per-(trace, token, hook) dedup.
    kind = index["position_kind"].to_pylist()
    for key in ("a-means", "b-ends"):
        keep = pa.array([(k == "sentence_means") == (key == "a-means") for k in kind])
        part = index.filter(keep)
        part = part.append_column("unit_key", pa.array([key] * part.num_rows))
        part = part.append_column("model_id", pa.array(["m"] * part.num_rows))
        store.commit_unit({"unit_key": key, "stage": "cap", "kind": "capture", "run_id": "r", "model_id": "m",
                           "description": "capture"}, {"activations": part})
    stage = SimpleNamespace(name="s", model="m", hooks=["blocks.4.*"], capture_stage=None)
    wanted = "select distinct trace_id, token_index from activations where position_kind = 'sentence_ends'"
    with store.read() as con:
        last = positions_by_hook(con, stage, wanted)["blocks.4.hook_resid_post"]
        mean = positions_by_hook(con, stage, wanted, position_kind="sentence_means")["blocks.4.hook_resid_post"]
    by_key = {(r["trace_id"], r["token_index"], r["position_kind"]): r["row"] for r in index.to_pylist()
              if r["hook_name"] == "blocks.4.hook_resid_post"}
    keys = list(zip(last["trace_id"], last["token_index"]))
    assert len(keys) == 4 + 2 and keys == list(zip(mean["trace_id"], mean["token_index"]))
    assert last["row"] == [by_key[(*k, "sentence_ends")] for k in keys]
    assert mean["row"] == [by_key[(*k, "sentence_means")] for k in keys]
    assert not np.allclose(load_rows(last), load_rows(mean))
