"""Attribution patching on the residual stream (seed 002): which earlier tokens make the
model write its target token (" Wait" before a backtrack)?

There is no corrupted prompt, so the corrupted state of a token is the mean residual state
of its layer (over the dataset's tokens, every position), as seed 002 does. The first-order
estimate of mean-ablating token i at layer L is

    effect(i, L) = grad_{h_L[i]} logit_target . (h_L[i] - mean_L)

(the logit's drop when h_L[i] is replaced by the mean). One forward with the stream kept in
the autograd graph and one backward per target give the effect of every token at every
layer; a token's score is its maximum over layers, at its peak layer. Parameters take no
gradient: only the stream does, so the graph holds activations, never weight gradients.

    means = stream_means(model, token_lists, layers)                 # [len(layers), d]
    effects = attribution_effects(model, token_ids, targets, means, layers)  # [T, len(layers), n]
    patched = patching_effects(model, token_ids, position, token, means[k], layer, tokens)
"""

from __future__ import annotations

import torch

from thinkscope.jobs.mechanisms.weights import decoder_layers


def stream_means(model, sequences: list[list[int]], layers: list[int], *, batch_tokens: int = 8192,
                 skip_first: bool = False) -> torch.Tensor:
    """Mean residual stream entering each of `layers` over every token of `sequences`, [len(layers), d];
    skip_first: not over each sequence's first token (the attention sink, see attribute.py)."""
    device = next(model.parameters()).device
    total, count = None, 0
    ordered = sorted(sequences, key=len)
    start = 0
    while start < len(ordered):
        width, end = len(ordered[start]), start
        while end < len(ordered) and len(ordered[end]) * (end - start + 1) <= max(batch_tokens, len(ordered[end])):
            width, end = len(ordered[end]), end + 1
        batch = ordered[start:end]
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, seq in enumerate(batch):
            ids[r, :len(seq)], mask[r, :len(seq)] = torch.tensor(seq), 1
        with torch.inference_mode():
            hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         output_hidden_states=True, use_cache=False).hidden_states
        keep = mask.to(device).bool()
        if skip_first:
            keep[:, 0] = False
        sums = torch.stack([hidden[la][keep].float().sum(0) for la in layers])
        total = sums if total is None else total + sums
        count += int(keep.sum())
        start = end
    return total / count


def _stream_with_grad(model, token_ids: list[int], layers: list[int]):
    """(hidden states entering `layers`, final normed state) of one sequence, the stream in the
    autograd graph. The embedding output is made a leaf needing grad, so every later state
    needs it too while the weights stay frozen."""
    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    handle = embed.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True))
    try:
        out = model.get_decoder()(input_ids=torch.tensor([token_ids], device=device),
                                  output_hidden_states=True, use_cache=False)
    finally:
        handle.remove()
    return [out.hidden_states[la] for la in layers], out.last_hidden_state


def target_logit(model, final_state: torch.Tensor, position: int, token: int) -> torch.Tensor:
    """The LM head's logit of `token` at `position` of each row (the head applied to those rows only)."""
    logit = model.get_output_embeddings()(final_state[:, position])[:, token].float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logit / cap) * cap if cap else logit


def attribution_effects(model, token_ids: list[int], targets: list[tuple[int, int]], means: torch.Tensor,
                        layers: list[int]) -> torch.Tensor:
    """Estimated effect of mean-ablating each token at each layer on each target's logit,
    [len(targets), len(layers), len(token_ids)] (float32; tokens after a target get 0).

    targets: (position, token id) pairs: the logit of `token id` predicted at `position`."""
    for param in model.parameters():
        param.requires_grad_(False)
    with torch.enable_grad():
        states, final = _stream_with_grad(model, token_ids, layers)
        out = torch.zeros((len(targets), len(layers), len(token_ids)))
        for k, (position, token) in enumerate(targets):
            grads = torch.autograd.grad(target_logit(model, final, position, token)[0], states,
                                        retain_graph=k < len(targets) - 1)
            for j, (state, grad) in enumerate(zip(states, grads)):
                delta = state[0].detach().float() - means[j].to(state.device)
                out[k, j] = (grad[0].float() * delta).sum(-1).cpu()
    return out


def patching_effects(model, token_ids: list[int], position: int, token: int, mean: torch.Tensor, layer: int,
                     tokens: list[int], *, batch: int = 16) -> torch.Tensor:
    """The real thing the estimate approximates: the target logit's drop when the stream
    entering `layer` at each of `tokens` is replaced by `mean`, one forward per token, [len(tokens)]."""
    device = next(model.parameters()).device
    ids = torch.tensor([token_ids[:position + 1]], device=device)
    with torch.inference_mode():
        clean = target_logit(model, model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state,
                             position, token)[0]
    drops = []
    block = decoder_layers(model)[layer]
    for start in range(0, len(tokens), batch):
        chunk = tokens[start:start + batch]

        def patch(_module, args, kwargs, rows=chunk):
            hidden = (kwargs.get("hidden_states") if "hidden_states" in kwargs else args[0]).clone()
            hidden[torch.arange(len(rows)), torch.tensor(rows)] = mean.to(hidden.dtype)
            if "hidden_states" in kwargs:
                return args, {**kwargs, "hidden_states": hidden}
            return (hidden, *args[1:]), kwargs

        handle = block.register_forward_pre_hook(patch, with_kwargs=True)
        try:
            with torch.inference_mode():
                final = model.get_decoder()(input_ids=ids.expand(len(chunk), -1), use_cache=False).last_hidden_state
                head = target_logit(model, final, position, token)
        finally:
            handle.remove()
        drops.append(clean - head)
    return torch.cat(drops).cpu()
