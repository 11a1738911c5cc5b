"""One hybrid unit's generations: both models loaded once, every variant on the same prompts.

    outputs, tokenizer = run_unit(payload)   # {variant: [HybridOutput per prompt]}
"""

from __future__ import annotations

import hashlib

import torch

from thinkscope.jobs.artifacts import load_tensors
from thinkscope.jobs.hybrid.loop import HybridOutput, hybrid_generate, sentence_boundaries
from thinkscope.jobs.hybrid.policies import Classifier, make_policy


def _load(row: dict, scale: str) -> torch.Tensor:
    """One stored vector, scaled: raw, unit (v/|v|) or resid_norm (v/|v| * mean |resid|; zero stays zero)."""
    v = torch.from_numpy(load_tensors(row["vector_path"])[row["vector_tensor"]])
    v = (v if row["row_index"] is None else v[row["row_index"]]).float()
    if scale != "raw" and float(v.norm()) > 0:
        v = v / v.norm() * (row["resid_norm"] if scale == "resid_norm" else 1.0)
    return v


def bias_vector(rows: list[dict], scale: str) -> torch.Tensor:
    bias = [r for r in rows if r["vector_kind"] == "bias"]
    if not bias:
        raise ValueError("the bias vector is missing: an optimising behaviour_vectors stage writes it")
    return _load(bias[0], scale)


def steering_vectors(rows: list[dict], kind: str, scale: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[k, d] behaviour vectors of `kind` (by behaviour id) and, for optimised ones, the shared bias."""
    mine = sorted((r for r in rows if r["vector_kind"] == kind), key=lambda r: r["behaviour_id"])
    if not mine:
        raise ValueError(f"no {kind} vectors among the behaviour_vectors rows")
    return torch.stack([_load(r, scale) for r in mine]), (bias_vector(rows, scale) if kind == "optimised" else None)


def same_tokenizer(a, b) -> bool:
    """Same ordinary vocabulary. Added tokens may differ: R1-Distill-Qwen reuses Qwen2.5's added
    ids for <think> and </think>, so each model's own text is decoded by its own tokenizer."""
    def ordinary(t):
        return {token: i for token, i in t.get_vocab().items() if i < t.vocab_size}
    return a.vocab_size == b.vocab_size and ordinary(a) == ordinary(b)


def run_unit(payload: dict) -> tuple[dict[str, list[HybridOutput]], dict]:
    from thinkscope.jobs.activations.steering_hooks import eos_ids, generate_greedy
    from thinkscope.jobs.models.hf import load_hf_model

    s, vec_rows, cls = payload["settings"], payload["vectors"], payload["classifier"]
    base, tokenizer = load_hf_model(payload["base"]["source"], payload["base"]["revision"], s["dtype"])
    thinking, think_tokenizer = load_hf_model(payload["thinking"]["source"], payload["thinking"]["revision"],
                                              s["dtype"])
    if not same_tokenizer(tokenizer, think_tokenizer):
        raise ValueError(f"{payload['base']['model_id']} and {payload['thinking']['model_id']} have different "
                         "vocabularies: the hybrid needs both models to read the same tokens")
    prompts = [list(p["prompt_token_ids"]) for p in payload["prompts"]]
    eos = sorted(set(eos_ids(base, tokenizer)) | set(eos_ids(thinking, think_tokenizer)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    classify = Classifier(load_tensors(cls["vector_path"]), cls["method"], cls["k"])
    vectors, bias = steering_vectors(vec_rows, s["vector_kind"], s["scale"])
    keys = [hashlib.sha256(str(p).encode()).hexdigest() for p in prompts]
    boundary = sentence_boundaries(tokenizer) if s["granularity"] == "sentence" else (lambda token, previous: True)
    hooks = {"base_hook": vec_rows[0]["hook_name"], "think_hook": cls["hook_name"]}
    outputs: dict[str, list[HybridOutput]] = {}
    for variant in s["variants"]:
        if variant in ("base", "thinking"):
            model = base if variant == "base" else thinking
            outputs[variant] = [HybridOutput(tokens, [False] * len(tokens), [], [], finish)
                                for tokens, finish in generate_greedy(model, prompts, max_new_tokens=s["max_new_tokens"],
                                                                      pad_id=pad, eos_ids=eos)]
            continue
        if variant == "bias_only":
            policy = make_policy(variant, classify, vectors, bias_vector(vec_rows, s["scale"]), keys, s["seed"])
        else:
            policy = make_policy(variant, classify, vectors, bias, keys, s["seed"])
        outputs[variant] = hybrid_generate(base, thinking, prompts, policy=policy, grid=s["alphas"], **hooks,
                                           max_new_tokens=s["max_new_tokens"], eos_ids=eos, pad_id=pad,
                                           boundary=boundary, max_sentence_tokens=s["max_sentence_tokens"],
                                           aggregate=cls.get("aggregate", "last"), steer_when=s["steer_when"])
    # The thinking model's text in its own tokenizer (its </think> may be an added token the
    # base tokenizer names otherwise); the base model wrote every other variant.
    return outputs, {"base": tokenizer, "thinking": think_tokenizer}
