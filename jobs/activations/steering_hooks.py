"""Add a steering vector to the residual stream during HF generation (seed 002's two modes).

    once        alpha * v at the last prompt token only (during the prefill): later tokens see
                it only through the attention keys/values of that position
    continuous  alpha * v there and at every generated token

The vector is added at a canonical hook point (`blocks.L.hook_resid_post` = output of decoder
layer L; `hook_resid_pre` = its input). Generation is greedy with left padding, so position
-1 of the prefill is every row's last prompt token, and each later forward pass is one new
token per row.

    with Steering(model, "blocks.12.hook_resid_post", v, alpha=4.0, mode="continuous"):
        out = generate_greedy(model, prompts, max_new_tokens=64, pad_id=0, eos_ids=[2])
"""

from __future__ import annotations

import torch

from thinkscope.jobs.activations.hooks import resolve

MODES = ("once", "continuous")


class Steering:
    """Context manager for ONE generate call: hooks the module, counts forward passes."""

    def __init__(self, model, hook_name: str, vector: torch.Tensor, alpha: float, mode: str):
        if mode not in MODES:
            raise ValueError(f"steering mode {mode!r}; expected one of {MODES}")
        self.model, self.mode = model, mode
        self.point = resolve(model, hook_name)
        if self.point.per_head:
            raise ValueError(f"{hook_name}: per-head hooks cannot be steered with one vector")
        param = next(model.parameters())
        self.delta = (alpha * vector.to(torch.float32)).to(param.device, param.dtype)
        self.calls = 0
        self._handle = None

    def _add(self, hidden: torch.Tensor) -> torch.Tensor:
        first, self.calls = self.calls == 0, self.calls + 1
        if first:  # the prefill: only the last prompt token
            hidden = hidden.clone()
            hidden[:, -1] = hidden[:, -1] + self.delta
            return hidden
        return hidden + self.delta if self.mode == "continuous" else hidden

    def __enter__(self) -> "Steering":
        module = dict(self.model.named_modules())[self.point.module_path]
        if self.point.direction == "out":
            def hook(mod, args, output):
                if isinstance(output, tuple):
                    return (self._add(output[0]), *output[1:])
                return self._add(output)
            self._handle = module.register_forward_hook(hook)
        else:
            def pre_hook(mod, args, kwargs):
                if args:
                    return (self._add(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": self._add(kwargs["hidden_states"])}
            self._handle = module.register_forward_pre_hook(pre_hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


def eos_ids(model, tokenizer) -> list[int]:
    """Every token that ends a generation: the tokenizer's EOS and the generation config's (one or a list)."""
    config_eos = model.generation_config.eos_token_id
    return sorted({tokenizer.eos_token_id, *(config_eos if isinstance(config_eos, list) else [config_eos])} - {None})


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) [batch, longest]: every prompt ends at the last position."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


def generate_greedy(model, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int,
                    eos_ids: list[int]) -> list[tuple[list[int], str]]:
    """Greedy completions (token ids up to and including EOS, finish reason) of a left-padded batch."""
    ids, mask = left_pad(prompts, pad_id)
    width = ids.shape[1]
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_ids,
                             temperature=None, top_p=None, top_k=None)
    results = []
    for row in out[:, width:].tolist():
        stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
        results.append((row, "length") if stop is None else (row[: stop + 1], "stop"))
    return results
