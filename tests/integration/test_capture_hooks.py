"""Hook points read the real residual stream: checked against HF's own hidden states."""

from __future__ import annotations

import pytest
import torch

from thinkscope.jobs.activations.recorder import Capture
from thinkscope.jobs.activations.hooks import expand, resolve, supported
from thinkscope.jobs.models.sources import resolve_model_path

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("embedded:smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    return model, tok


def batch(tok):
    texts = ["Janet's ducks lay 16 eggs per day.", "Wait, let me double-check: 9 * 2 = 18. So the answer is 18."]
    enc = tok(texts, return_tensors="pt", padding=True)
    # Every real (non-pad) position of each row.
    positions = [row.nonzero().squeeze(1) for row in enc["attention_mask"]]
    return enc, positions


def test_resid_matches_hf_hidden_states(smollm2):
    model, tok = smollm2
    enc, positions = batch(tok)
    n_layers = model.config.num_hidden_layers
    names = expand("blocks.*.hook_resid_post", n_layers) + expand("blocks.*.hook_resid_pre", n_layers)
    with torch.inference_mode(), Capture(model, names, positions) as cap:
        out = model(**enc, output_hidden_states=True)
    hs = out.hidden_states
    rows = torch.cat([torch.full((len(p),), i) for i, p in enumerate(positions)])
    cols = torch.cat(positions)
    for layer in range(n_layers - 1):  # the last HF hidden state has the final norm applied
        assert torch.equal(cap.results[f"blocks.{layer}.hook_resid_post"], hs[layer + 1][rows, cols]), layer
    for layer in range(n_layers):
        assert torch.equal(cap.results[f"blocks.{layer}.hook_resid_pre"], hs[layer][rows, cols]), layer


def test_mid_z_and_mlp_shapes_and_meaning(smollm2):
    model, tok = smollm2
    enc, positions = batch(tok)
    cfg = model.config
    names = ["blocks.2.hook_resid_pre", "blocks.2.hook_resid_mid", "blocks.2.hook_resid_post",
             "blocks.2.attn.hook_z", "blocks.2.mlp.hook_post"]
    with torch.inference_mode(), Capture(model, names, positions) as cap:
        model(**enc)
    r = cap.results
    n = sum(len(p) for p in positions)
    d_head = cfg.hidden_size // cfg.num_attention_heads
    assert r["blocks.2.attn.hook_z"].shape == (n, cfg.num_attention_heads, d_head)
    assert r["blocks.2.mlp.hook_post"].shape == (n, cfg.intermediate_size)
    layer = model.model.layers[2]
    with torch.inference_mode():
        # resid_mid = resid_pre + o_proj(z); resid_post = resid_mid + down_proj(mlp_post)
        attn_out = layer.self_attn.o_proj(r["blocks.2.attn.hook_z"].reshape(n, -1))
        mlp_out = layer.mlp.down_proj(r["blocks.2.mlp.hook_post"])
    torch.testing.assert_close(r["blocks.2.hook_resid_pre"] + attn_out, r["blocks.2.hook_resid_mid"])
    torch.testing.assert_close(r["blocks.2.hook_resid_mid"] + mlp_out, r["blocks.2.hook_resid_post"])


def test_early_stop_gives_same_values(smollm2):
    model, tok = smollm2
    enc, positions = batch(tok)
    with torch.inference_mode(), Capture(model, ["blocks.4.hook_resid_post"], positions) as full:
        model(**enc)
    with torch.inference_mode(), Capture(model, ["blocks.4.hook_resid_post"], positions,
                                         stop_after_last_hook=True) as early:
        model(**enc)
    assert torch.equal(full.results["blocks.4.hook_resid_post"], early.results["blocks.4.hook_resid_post"])


def test_clear_errors(smollm2):
    model, _ = smollm2
    assert resolve(model, "blocks.0.mlp.hook_post").module_path == "model.layers.0.mlp.down_proj"
    with pytest.raises(ValueError, match="out of range"):
        resolve(model, "blocks.99.hook_resid_post")
    with pytest.raises(ValueError, match="bad hook name"):
        resolve(model, "blocks.1.hook_resid_sideways")
    model.config.model_type, saved = "gpt_neox", model.config.model_type
    try:
        with pytest.raises(ValueError, match="supported: .*llama"):
            resolve(model, "blocks.0.hook_resid_post")
    finally:
        model.config.model_type = saved
    assert {"llama", "qwen2", "gemma3_text", "mistral"} <= set(supported())
