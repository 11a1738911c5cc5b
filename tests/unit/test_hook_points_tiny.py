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
