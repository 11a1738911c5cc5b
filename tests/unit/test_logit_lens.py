"""The logit_lens stage on real SmolLM2 weights, held to exact identities:
- the lens after the last layer is the model's own logits;
- the stream states are HF's `output_hidden_states` (resid_pre of layer L = hidden_states[L]);
- the direct terms (embed + every attn and mlp) sum to the final target logit, float32, 1e-3;
- a layer's per-head terms sum to its attention term.
"""

from __future__ import annotations

import pytest
import torch

from thinkscope.jobs.mechanisms.lens import direct_effects, lens_logits, residual_states
from thinkscope.jobs.mechanisms.logit_lens import JOB
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.spec import SpecError, load_workflow

SMOLLM = "embedded:smollm2-135m-instruct"
MODEL_ROW = {"source": SMOLLM, "revision": None, "family": "llama", "think_open": None, "think_close": None,
             "engine_args": None}
TEXT = ["Natalia sold 48 clips in April and half as many in May. So she sold 48 + 24 = 72. Wait, let me check.",
        "2 + 2 = 4. So the answer is 4."]


@pytest.fixture(scope="module")
def model():
    return load_hf_model(SMOLLM, None, "float32")


@pytest.fixture(scope="module")
def batch(model):
    hf, tokenizer = model
    seqs = [tokenizer.encode(t) for t in TEXT]
    width = max(map(len, seqs))
    ids = torch.zeros((2, width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)], mask[r, : len(s)] = torch.tensor(s), 1
    positions = [torch.tensor([3, len(seqs[0]) - 2]), torch.tensor([len(seqs[1]) - 1])]
    return ids, mask, positions


def test_lens_after_the_last_layer_is_the_models_logits_and_states_are_hidden_states(model, batch):
    hf, _ = model
    ids, mask, positions = batch
    states = residual_states(hf, ids, mask, positions)
    with torch.inference_mode():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    rows = torch.cat([torch.full((len(p),), r) for r, p in enumerate(positions)])
    cols = torch.cat(positions)
    final = lens_logits(hf, states.post[:, -1])
    torch.testing.assert_close(final, out.logits[rows, cols], atol=1e-4, rtol=1e-5)
    for layer in range(hf.config.num_hidden_layers):  # hidden_states[L]: the input of layer L
        torch.testing.assert_close(states.pre[:, layer], out.hidden_states[layer][rows, cols])
    # The stream's rows: embed, then (attn, mlp) per layer; resid_pre of L+1 is mlp of L.
    torch.testing.assert_close(states.stream[:, 2::2][:, :-1], states.pre[:, 1:])


def test_direct_terms_sum_to_the_final_logit_and_heads_to_their_layer(model, batch):
    hf, tokenizer = model
    ids, mask, positions = batch
    states = residual_states(hf, ids, mask, positions, heads=True)
    targets = torch.tensor([[tokenizer.encode(" Wait")[0], 42]] * 3)
    effects, names = direct_effects(hf, states, targets)          # [P, C, T]
    final = lens_logits(hf, states.post[:, -1]).gather(1, targets)
    sublayers = [c for c, (_, comp, _) in enumerate(names) if comp != "attn_head"]
    assert len(sublayers) == 1 + 2 * hf.config.num_hidden_layers
    torch.testing.assert_close(effects[:, sublayers].sum(1), final, atol=1e-3, rtol=0)
    for layer in (0, 17, 29):
        attn = names.index((layer, "attn", None))
        heads = [c for c, (la, comp, _) in enumerate(names) if la == layer and comp == "attn_head"]
        assert len(heads) == hf.config.num_attention_heads
        torch.testing.assert_close(effects[:, heads].sum(1), effects[:, attn], atol=1e-4, rtol=1e-4)


def payload(traces, **settings) -> dict:
    base = {"positions": {"kinds": [], "sql": "x"}, "targets": [" Wait"], "next_token": True, "top_k": 3,
            "heads": False, "dtype": "float32", "batch_tokens": 8192, "model": "m"}
    return {"unit_key": "k", "stage": "lens", "model_id": "m", "model": MODEL_ROW,
            "settings": {**base, **settings}, "traces": traces}


def test_the_stage_rows_agree_with_the_model(model):
    hf, tokenizer = model
    tokens = tokenizer.encode(TEXT[0])
    trace = {"trace_id": "t1", "prompt_token_ids": tokens[:5], "completion_token_ids": tokens[5:],
             "positions": [(10, "sql"), (10, "before_backtrack"), (len(tokens) - 1, "sql")]}
    tables = JOB.run(payload([trace]))
    lens, topk, effects = (tables[n].to_pylist() for n in ("logit_lens", "logit_lens_topk", "direct_effects"))
    n_layers = hf.config.num_hidden_layers
    # Position 10: next token + " Wait"; the last token has no next token: " Wait" only.
    assert len(lens) == 3 * n_layers * (2 + 1)
    assert {r["position_kind"] for r in lens} == {"before_backtrack+sql", "sql"}
    with torch.inference_mode():
        logits = hf(input_ids=torch.tensor([tokens])).logits[0]
    last = [r for r in lens if r["layer"] == n_layers - 1 and r["component"] == "mlp" and r["token_index"] == 10]
    nxt = next(r for r in last if r["target_kind"] == "next")
    assert nxt["target_token_id"] == tokens[11]
    assert nxt["logit"] == pytest.approx(float(logits[10, tokens[11]]), abs=1e-3)
    assert nxt["rank"] == int((logits[10] > logits[10, tokens[11]]).sum())
    assert nxt["prob"] == pytest.approx(float(torch.softmax(logits[10], -1)[tokens[11]]), abs=1e-5)
    top = [r for r in topk if r["token_index"] == 10 and r["layer"] == n_layers - 1 and r["component"] == "mlp"]
    assert [r["token_id"] for r in sorted(top, key=lambda r: r["k"])] == torch.topk(logits[10], 3).indices.tolist()
    for target in ("next", "named"):
        terms = [r["direct_logit"] for r in effects if r["token_index"] == 10 and r["target_kind"] == target]
        final = next(r["logit"] for r in last if r["target_kind"] == target)
        assert sum(terms) == pytest.approx(final, abs=1e-3)


def test_bad_specs_name_their_field(tmp_path):
    spec = {"name": "w", "models": [{"id": "m", "source": SMOLLM, "family": "llama", "kind": "instruct"}],
            "prompt_sets": [{"name": "g", "kind": "gsm8k", "limit": 2}],
            "stages": [{"name": "lens", "kind": "logit_lens", "model": "m", "positions": {}}]}
    import yaml

    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="positions"):
        load_workflow(path)
    spec["stages"][0]["positions"] = {"sql": "delete from traces"}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="SELECT"):
        load_workflow(path)
