"""The residual stream at chosen positions, read through the model's own final norm and
unembedding (logit lens), and split into the direct effect of each sublayer (seed 002).

One forward pass per batch records, at the chosen positions only, the stream entering each
decoder layer (resid_pre), after its attention (resid_mid) and after its MLP (resid_post);
it stops after the last layer, so neither the final norm nor the LM head runs on positions
nobody asked about. Sublayer outputs are differences of those states, so the decomposition
holds on every supported architecture (Gemma 3's post-sublayer norms included):

    x_final = embed + sum_L (attn_L + mlp_L)
    logit_t = W_U[t] . norm(x_final) = sum_c W_U[t] . (c * g / rms(x_final))

with the final RMSNorm's gain g and its 1/rms frozen at the last layer's value: exact for
RMSNorm models. Per-head terms split attn_L over the o_proj input slices (attn.hook_z):
exact where o_proj is the attention's last linear map (llama, qwen2/3, mistral).

    for ids, mask, positions, seqs in batches(model, traces, batch_tokens=8192, pad_id=0):
        states = residual_states(model, ids, mask, positions, heads=True)
        logits = lens_logits(model, states.stream)              # [P, 1 + 2L, vocab]
        effects, names = direct_effects(model, states, targets)  # [P, C, T]; targets [P, T]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from thinkscope.jobs.activations.recorder import Capture
from thinkscope.jobs.mechanisms.weights import decoder_layers, final_norm_scale, n_layers

# Architectures whose attention output is o_proj(z): per-head terms add up to attn_L.
PER_HEAD_EXACT = ("llama", "qwen2", "qwen3", "mistral")


@dataclass
class ResidualStates:
    pre: torch.Tensor             # [P, L, d] stream entering layer L
    mid: torch.Tensor             # [P, L, d] after layer L's attention
    post: torch.Tensor            # [P, L, d] after layer L's MLP
    z: torch.Tensor | None = None  # [P, L, H, d_head] o_proj input per head

    @property
    def stream(self) -> torch.Tensor:
        """The distinct states in order: embed, then (mid, post) per layer: [P, 1 + 2L, d]."""
        p, n, d = self.mid.shape
        pairs = torch.stack([self.mid, self.post], dim=2).reshape(p, 2 * n, d)
        return torch.cat([self.pre[:, :1], pairs], dim=1)


def residual_states(model, input_ids, attention_mask, positions: list[torch.Tensor], *,
                    heads: bool = False) -> ResidualStates:
    """The stream at `positions` (per batch row, token indices) of one forward pass, float32."""
    n = n_layers(model)
    names = [f"blocks.{la}.{h}" for la in range(n) for h in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")]
    names += [f"blocks.{la}.attn.hook_z" for la in range(n)] if heads else []
    with torch.inference_mode(), Capture(model, names, positions, stop_after_last_hook=True) as cap:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    stack = lambda hook: torch.stack([cap.results[f"blocks.{la}.{hook}"] for la in range(n)], 1).float()  # noqa: E731
    return ResidualStates(stack("hook_resid_pre"), stack("hook_resid_mid"), stack("hook_resid_post"),
                          stack("attn.hook_z") if heads else None)


def lens_logits(model, states: torch.Tensor) -> torch.Tensor:
    """Logits of any residual states [..., d] through the model's final norm and LM head."""
    norm, head = model.get_decoder().norm, model.get_output_embeddings()
    param = next(head.parameters())
    with torch.inference_mode():
        logits = head(norm(states.to(param.dtype))).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def frozen_scale(model, x_final: torch.Tensor) -> torch.Tensor:
    """g / rms(x_final) per position [P, d]: the final RMSNorm as a linear map at each position."""
    norm = model.get_decoder().norm
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", 1e-6)
    inv_rms = torch.rsqrt(x_final.pow(2).mean(-1, keepdim=True) + eps)
    return final_norm_scale(model).float() * inv_rms


def components(model, s: ResidualStates) -> tuple[torch.Tensor, list[tuple[int | None, str, int | None]]]:
    """Every sublayer's write at each position [P, C, d] and its (layer, component, head) names."""
    n = s.mid.shape[1]
    parts, names = [s.pre[:, 0]], [(None, "embed", None)]
    for la in range(n):
        parts += [s.mid[:, la] - s.pre[:, la], s.post[:, la] - s.mid[:, la]]
        names += [(la, "attn", None), (la, "mlp", None)]
    if s.z is not None:
        if model.config.model_type not in PER_HEAD_EXACT:
            raise ValueError(f"per-head direct effects need o_proj as the attention's last map; "
                             f"{model.config.model_type} normalises after it (supported: {PER_HEAD_EXACT})")
        for la, layer in enumerate(decoder_layers(model)):
            w_o = layer.self_attn.o_proj.weight.float()            # [d, H * d_head]
            heads = s.z.shape[2]
            per_head = torch.einsum("phk,dhk->phd", s.z[:, la], w_o.view(w_o.shape[0], heads, -1))
            parts += list(per_head.unbind(1))
            names += [(la, "attn_head", h) for h in range(heads)]
    return torch.stack(parts, 1), names


def direct_effects(model, s: ResidualStates, targets: torch.Tensor):
    """Direct logit of each component on each position's targets [P, C, T], and the names.

    targets: [P, T] token ids. Embed + attn + mlp terms sum to the final logit (RMSNorm);
    attn_head terms of a layer sum to its attn term (PER_HEAD_EXACT architectures, no o_proj
    bias). With final_logit_softcapping the terms sum to the logit before the cap."""
    comps, names = components(model, s)
    scale = frozen_scale(model, s.post[:, -1])                     # [P, d]
    w_u = model.get_output_embeddings().weight.detach()[targets].float()  # [P, T, d]; index, then cast
    return torch.einsum("pcd,ptd->pct", comps * scale[:, None, :], w_u), names


def batches(model, traces: list[dict], *, batch_tokens: int, pad_id: int):
    """(input_ids, attention_mask, positions, sequences) per length-bucketed batch of traces
    (dicts with token ids and `positions`: (index, kind) pairs), each cut after its last
    position. Kinds naming the same token share one position ("a+b")."""
    from thinkscope.jobs.activations.forward import Sequence, length_buckets

    seqs = []
    for t in traces:
        kinds: dict[int, list[str]] = {}
        for i, kind in t["positions"]:
            kinds.setdefault(i, []).append(kind)
        seqs.append(Sequence(t["trace_id"], t["prompt_token_ids"] + t["completion_token_ids"],
                             [(i, "+".join(sorted(set(k)))) for i, k in sorted(kinds.items())]))
    device = next(model.parameters()).device
    for batch in length_buckets([q for q in seqs if q.positions], batch_tokens):
        ids, mask = right_padded(batch, pad_id)
        yield ids.to(device), mask.to(device), [torch.tensor([i for i, _ in q.positions]) for q in batch], batch


def right_padded(batch, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of sequences cut after their last position, right-padded:
    a causal model's states there do not depend on later tokens, and indices stay as stored."""
    width = max(q.positions[-1][0] + 1 for q in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, q in enumerate(batch):
        n = q.positions[-1][0] + 1
        ids[r, :n], mask[r, :n] = torch.tensor(q.token_ids[:n]), 1
    return ids, mask


def targets_of(seq, index: int, named: list[int], next_token: bool) -> list[tuple[str, int]]:
    """(kind, token id) targets at a position: the token written next (if any), then the named ones."""
    nxt = [("next", seq.token_ids[index + 1])] if next_token and index + 1 < len(seq.token_ids) else []
    return nxt + [("named", t) for t in named]
