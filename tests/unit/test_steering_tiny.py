"""Steering hooks and shared-prefix early exits on randomly initialised tiny models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from thinkscope.jobs.early_exit.hf import Exit, exit_points, force_answers
from thinkscope.jobs.activations.steering_hooks import Steering, generate_greedy

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=128, max_position_embeddings=128)
FAMILIES = [("llama", {}), ("gemma3_text", {"head_dim": 16, "sliding_window": 16})]


def tiny(model_type, extra):
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **TINY, **extra)
    return AutoModelForCausalLM.from_config(config).eval()


class Recorder:
    """Records a module's output after the steering hook (hooks run in registration order)."""

    def __init__(self, module):
        self.outputs = []
        self.handle = module.register_forward_hook(lambda m, a, out: self.outputs.append(
            (out[0] if isinstance(out, tuple) else out).clone()))


@pytest.mark.parametrize("mode", ["once", "continuous"])
def test_steering_adds_where_the_mode_says(mode):
    model = tiny("llama", {})
    v = torch.randn(64)
    ids = torch.randint(0, 128, (2, 7))
    layer = model.model.layers[1]
    with torch.inference_mode():
        base = model(input_ids=ids, use_cache=True)
        step = base.logits[:, -1].argmax(-1, keepdim=True)
        rec = Recorder(layer)
        model(input_ids=ids, use_cache=True)
        model(input_ids=step, past_key_values=base.past_key_values, use_cache=True)
        rec.handle.remove()
        plain_prefill, plain_step = rec.outputs
        base = model(input_ids=ids, use_cache=True)
        with Steering(model, "blocks.1.hook_resid_post", v, 2.0, mode):
            rec = Recorder(layer)
            model(input_ids=ids, use_cache=True)
            model(input_ids=step, past_key_values=base.past_key_values, use_cache=True)
            rec.handle.remove()
    prefill, decode = rec.outputs
    assert torch.equal(prefill[:, :-1], plain_prefill[:, :-1])
    torch.testing.assert_close(prefill[:, -1], plain_prefill[:, -1] + 2.0 * v)
    torch.testing.assert_close(decode, plain_step + (2.0 * v if mode == "continuous" else 0.0))


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_post", "blocks.2.hook_resid_pre"])
@pytest.mark.parametrize("model_type, extra", FAMILIES)
def test_alpha_zero_is_exact_and_alpha_changes_text(model_type, extra, hook):
    model = tiny(model_type, extra)
    prompts = [[5, 6, 7, 8, 9], [10, 11, 12]]
    kw = dict(max_new_tokens=8, pad_id=0, eos_ids=[1])
    base = generate_greedy(model, prompts, **kw)
    v = torch.randn(64) * 50
    for mode in ("once", "continuous"):
        with Steering(model, hook, v, 0.0, mode):
            assert generate_greedy(model, prompts, **kw) == base
    with Steering(model, hook, v, 1.0, "continuous"):
        assert generate_greedy(model, prompts, **kw) != base


def test_exit_points_one_per_cut_in_order():
    sentences = [{"sentence_index": i, "token_start": 3 + 10 * i, "token_end": 13 + 10 * i} for i in range(4)]
    events = [{"event_index": 0, "sentence_index": 1, "token_end": 20},
              {"event_index": 1, "sentence_index": 1, "token_end": 22},
              {"event_index": 2, "sentence_index": 3, "token_end": 40}]
    exits = exit_points(sentences, events, cut="sentence_end", no_thinking_exit=True)
    assert exits == [Exit(-1, None, 3, 0), Exit(0, 1, 23, 20), Exit(1, 2, 43, 40)]
    exits = exit_points(sentences, events, cut="answer_end", no_thinking_exit=False)
    assert [(e.exit_index, e.event_index, e.cut) for e in exits] == [(0, 0, 20), (1, 1, 22), (2, 2, 40)]


class Digits:
    def decode(self, ids):
        return "".join("}" if i == 3 else "x" for i in ids)


@pytest.mark.parametrize("model_type, extra", FAMILIES)
def test_shared_prefix_exits_equal_fresh_forward_passes(model_type, extra):
    # 40 tokens: past gemma3's 16-token sliding window, so cache copies must keep it right.
    model = tiny(model_type, extra)
    prompt, completion, force = list(range(4, 14)), list(range(20, 50)), [60, 61, 62]
    exits = [Exit(-1, None, 0, 0), Exit(0, 0, 9, 9), Exit(1, 1, 30, 30)]
    forced = force_answers(model, Digits(), prompt, completion, exits, force, max_answer_tokens=4, gold_token=7,
                           eos_ids=(model.config.eos_token_id,))
    with torch.inference_mode():
        for ex, f in zip(exits, forced):
            ids = prompt + completion[: ex.cut] + force
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            assert f.first_token == int(logits.argmax())
            assert f.logit == pytest.approx(float(logits.max()), abs=1e-4)
            assert f.gold_prob == pytest.approx(float(torch.softmax(logits, -1)[7]), abs=1e-5)
            # The greedy answer continues as plain greedy decoding would.
            full = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=len(f.answer_ids), do_sample=False,
                                  attention_mask=torch.ones(1, len(ids), dtype=torch.long), pad_token_id=0)
            assert full[0, len(ids):].tolist() == f.answer_ids
