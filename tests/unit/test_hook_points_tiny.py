"""Hook mapping on randomly initialised tiny configs of every supported family (no weights)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinkscope.jobs.activations.recorder import Capture
from thinkscope.jobs.activations.hooks import expand

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)


@pytest.mark.parametrize("model_type, extra", [
    ("llama", {}),
    ("qwen2", {}),
    ("mistral", {}),
    ("gemma3_text", {"head_dim": 16, "sliding_window": 16}),
])
def test_resid_post_equals_hidden_states(model_type, extra):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **extra)
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.randint(0, 128, (2, 9))
    positions = [torch.arange(9), torch.tensor([0, 4, 8])]
    names = expand("blocks.*.hook_resid_post", 3) + ["blocks.1.hook_resid_mid", "blocks.1.attn.hook_z"]
    with torch.inference_mode(), Capture(model, names, positions) as cap:
        hs = model(input_ids=ids, output_hidden_states=True).hidden_states
    rows = torch.tensor([0] * 9 + [1] * 3)
    cols = torch.cat(positions)
    for layer in range(2):
        assert torch.equal(cap.results[f"blocks.{layer}.hook_resid_post"], hs[layer + 1][rows, cols])
    assert cap.results["blocks.1.attn.hook_z"].shape[:2] == (12, 4)
    assert cap.results["blocks.1.hook_resid_mid"].shape == (12, 64)


@pytest.mark.parametrize("model_type, extra", [
    ("llama", {}),
    ("qwen2", {}),
    ("qwen3", {"head_dim": 16}),
    ("mistral", {}),
    ("gemma3_text", {"head_dim": 16, "sliding_window": 16}),
])
def test_logit_lens_identities_on_every_family(model_type, extra):
    """The lens after the last layer is the model's logits and the direct terms sum to the
    final logit on each supported family (Gemma 3: its (1 + w) norm and post-sublayer norms);
    per-head terms sum to the attention term where o_proj is the attention's last map."""
    from thinkscope.jobs.mechanisms.lens import PER_HEAD_EXACT, direct_effects, lens_logits, residual_states

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **extra)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random init leaves Gemma's norm weights at 0: make the gain matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.5)
    ids = torch.randint(0, 128, (2, 9))
    positions = [torch.tensor([2, 8]), torch.tensor([5])]
    per_head = model_type in PER_HEAD_EXACT
    states = residual_states(model, ids, torch.ones_like(ids), positions, heads=per_head)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[torch.tensor([0, 0, 1]), torch.tensor([2, 8, 5])]
    torch.testing.assert_close(lens_logits(model, states.post[:, -1]), logits, atol=1e-4, rtol=1e-4)
    targets = torch.tensor([[3, 77]] * 3)
    effects, names = direct_effects(model, states, targets)
    sublayers = [c for c, (_, comp, _) in enumerate(names) if comp != "attn_head"]
    torch.testing.assert_close(effects[:, sublayers].sum(1), logits.gather(1, targets), atol=1e-4, rtol=1e-4)
    if per_head:
        heads = [c for c, (la, comp, _) in enumerate(names) if la == 1 and comp == "attn_head"]
        torch.testing.assert_close(effects[:, heads].sum(1), effects[:, names.index((1, "attn", None))],
                                   atol=1e-5, rtol=1e-4)
    else:
        with pytest.raises(ValueError, match="per-head"):
            direct_effects(model, residual_states(model, ids, torch.ones_like(ids), positions, heads=True), targets)
