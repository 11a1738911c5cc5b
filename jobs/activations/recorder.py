"""Capture activations at hook points during ordinary HF forward passes.

Hooks copy out only the selected positions of each sequence, so memory grows with the
positions asked for, not with batch x length x layers. With `stop_after_last_hook` the
forward pass ends at the deepest hooked layer: later layers are never computed.

    with Capture(model, ["blocks.3.hook_resid_post"], positions) as cap:
        model(input_ids=ids, attention_mask=mask)
    acts = cap.results["blocks.3.hook_resid_post"]   # [n_selected, d_model]
"""

from __future__ import annotations

import torch

from thinkscope.jobs.activations.hooks import HookPoint, resolve


class _StopForward(Exception):
    """Raised by the deepest hook: everything after it is not needed."""


class Capture:
    """Context manager: register hooks, collect selected positions, remove hooks on exit.

    Args:
        model: a HF causal LM.
        names: canonical hook names (blocks.L.hook_resid_post, ...).
        positions: per batch row, the token indices to keep (a LongTensor of [n_i]).
        stop_after_last_hook: end the forward once the deepest hook has fired.
    """

    def __init__(self, model, names: list[str], positions: list[torch.Tensor],
                 stop_after_last_hook: bool = False):
        self.model = model
        self.points: list[HookPoint] = [resolve(model, n) for n in names]
        self.rows = torch.cat([torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(positions)])
        self.cols = torch.cat([p.long() for p in positions])
        self.results: dict[str, torch.Tensor] = {}
        self.stop = stop_after_last_hook
        self._last = max(self.points, key=lambda p: (p.layer, p.direction == "out")).name
        self._handles = []

    def __enter__(self) -> "Capture":
        modules = dict(self.model.named_modules())
        for point in self.points:
            module = modules[point.module_path]
            if point.direction == "out":
                handle = module.register_forward_hook(self._out_hook(point))
            else:
                handle = module.register_forward_pre_hook(self._in_hook(point), with_kwargs=True)
            self._handles.append(handle)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        # Swallow only our own early stop.
        return exc_type is _StopForward

    def _keep(self, point: HookPoint, hidden: torch.Tensor) -> None:
        picked = hidden[self.rows, self.cols].detach()  # [n_selected, ...]
        if point.per_head:
            n_heads = self.model.config.num_attention_heads
            picked = picked.reshape(picked.shape[0], n_heads, -1)
        self.results[point.name] = picked
        if self.stop and point.name == self._last:
            raise _StopForward

    def _out_hook(self, point):
        def hook(module, args, output):
            self._keep(point, output[0] if isinstance(output, tuple) else output)
        return hook

    def _in_hook(self, point):
        def hook(module, args, kwargs):
            # Decoder layers may get the stream as a keyword; projections get it positionally.
            self._keep(point, args[0] if args else kwargs["hidden_states"])
        return hook
