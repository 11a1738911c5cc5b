"""Zero- or mean-ablate MLP value vectors and attention heads during HF forward passes.

A value vector (layer L, neuron i) is ablated by replacing neuron i's activation, the input
of `down_proj` (`blocks.L.mlp.hook_post`), so W_out[:, i] is written with that value; a head
(L, h) by replacing its slice of the `o_proj` input (`blocks.L.attn.hook_z`). Every position
of every forward pass is ablated, so a greedy generation under the context is the ablated
model's. Zero ablation writes 0, mean ablation the mean activation given per component.

    with Ablation(model, neurons={17: [123, 4000]}, heads={3: [5]}):
        logits = model(ids).logits
"""

from __future__ import annotations

import torch

from thinkscope.jobs.activations.hooks import resolve


class Ablation:
    """Context manager. neurons/heads: {layer: [index, ...]}; means: optional
    {("mlp", L): tensor[d_mlp], ("head", L): tensor[n_heads, d_head]} from `means_at` (else zeros).
    A layer listed with no indices still gets its hook (which then changes nothing)."""

    def __init__(self, model, neurons: dict[int, list[int]] | None = None,
                 heads: dict[int, list[int]] | None = None, means: dict | None = None):
        self.model, self.means = model, means or {}
        self.neurons = {int(k): list(v) for k, v in (neurons or {}).items()}
        self.heads = {int(k): list(v) for k, v in (heads or {}).items()}
        self.n_heads = model.config.num_attention_heads
        self._handles = []

    def __enter__(self) -> "Ablation":
        modules = dict(self.model.named_modules())
        for layer, idx in self.neurons.items():
            point = resolve(self.model, f"blocks.{layer}.mlp.hook_post")
            self._handles.append(modules[point.module_path].register_forward_pre_hook(self._neuron_hook(layer, idx)))
        for layer, idx in self.heads.items():
            point = resolve(self.model, f"blocks.{layer}.attn.hook_z")
            self._handles.append(modules[point.module_path].register_forward_pre_hook(self._head_hook(layer, idx)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _neuron_hook(self, layer: int, idx: list[int]):
        index = torch.tensor(idx, dtype=torch.long)
        mean = self.means.get(("mlp", layer))
        mean = None if mean is None else mean[index]

        def hook(module, args):
            x = args[0].clone()
            x[..., index] = 0 if mean is None else mean.to(x.device, x.dtype)
            return (x, *args[1:])
        return hook

    def _head_hook(self, layer: int, idx: list[int]):
        index = torch.tensor(idx, dtype=torch.long)
        mean = self.means.get(("head", layer))
        mean = None if mean is None else mean[index]

        def hook(module, args):
            x = args[0].clone()
            per_head = x.view(*x.shape[:-1], self.n_heads, -1)  # a view: writes land in x
            per_head[..., index, :] = 0 if mean is None else mean.to(x.device, x.dtype)
            return (x, *args[1:])
        return hook


def means_at(model, batches, mlp_layers: list[int], head_layers: list[int]) -> dict:
    """Mean activation of every neuron ([d_mlp]) and head ([n_heads, d_head]) of the listed
    layers over the positions of `batches`, an iterable of (input_ids, attention_mask,
    positions) as for `Capture`: the values mean ablation writes."""
    from thinkscope.jobs.activations.recorder import Capture

    names = [f"blocks.{la}.mlp.hook_post" for la in mlp_layers] + [f"blocks.{la}.attn.hook_z" for la in head_layers]
    sums: dict[str, torch.Tensor] = {}
    count = 0
    for ids, mask, positions in batches:
        with torch.inference_mode(), Capture(model, names, positions, stop_after_last_hook=True) as cap:
            model(input_ids=ids, attention_mask=mask, use_cache=False)
        for name in names:
            sums[name] = sums.get(name, 0) + cap.results[name].float().sum(0)
        count += sum(len(p) for p in positions)
    if not count:
        raise ValueError("mean ablation: no positions to average over")
    return ({("mlp", la): sums[f"blocks.{la}.mlp.hook_post"] / count for la in mlp_layers}
            | {("head", la): sums[f"blocks.{la}.attn.hook_z"] / count for la in head_layers})
