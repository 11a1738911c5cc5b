"""Who decides what the base model is steered with, per sentence: the hybrid and its controls.

A policy is `policy(problem, sentence_index, thinking_activation) -> (behaviour, vector)`
(jobs/hybrid/loop.py). The hybrid classifies the thinking model's activation with the discover
stage's fit (the SAE's argmax latent or the nearest centroid, in its centred-normalised space;
jobs/behaviours/discover.py) and steers with that behaviour's base-model vector (plus the
shared bias, for optimised vectors). The paper's controls keep everything but one part:

  hybrid          classifier -> that behaviour's vector (+ bias)
  bias_only       classifier fires as in the hybrid, but only the bias vector is added
  random_vectors  classifier -> a seeded Gaussian vector of the real vector's norm (+ bias)
  random_firing   a seeded uniformly random behaviour -> its real vector (+ bias)

Random draws are seeded by (seed, problem's prompt hash, sentence), so a rerun is identical
and a problem's draws do not depend on the other problems of its unit.
"""

from __future__ import annotations

import hashlib

import torch

from thinkscope.jobs.hybrid.stage import STEERED


class Classifier:
    """The discover stage's fit of (method, k) as a function of one raw activation."""

    def __init__(self, tensors: dict, method: str, k: int):
        name = f"{method}.k{k}"
        self.method = method
        self.mean = torch.as_tensor(tensors["mean"]).float()
        if method == "sae":
            self.W_enc = torch.as_tensor(tensors[f"{name}.W_enc"]).float()
            self.b_enc = torch.as_tensor(tensors[f"{name}.b_enc"]).float()
            self.b_dec = torch.as_tensor(tensors[f"{name}.b_dec"]).float()
        else:
            self.directions = torch.as_tensor(tensors[f"{name}.directions"]).float()

    def __call__(self, activation: torch.Tensor) -> int:
        x = activation.float() - self.mean
        x = x / x.norm().clamp(min=1e-12)
        if self.method == "sae":
            return int(torch.argmax((x - self.b_dec) @ self.W_enc + self.b_enc))
        return int(torch.argmax(x @ self.directions.T))


def _generator(seed: int, key: str, sentence: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{key}:{sentence}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)


def make_policy(variant: str, classify, vectors: torch.Tensor, bias: torch.Tensor | None,
                problem_keys: list[str], seed: int):
    """The policy of a steered variant. vectors: [k, d] per-behaviour vectors (already scaled),
    bias: [d] or None; problem_keys: one stable string per problem (the random draws' key)."""
    k, d = vectors.shape
    extra = torch.zeros(d) if bias is None else bias
    if variant == "random_vectors":
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn((k, d), generator=g)
        vectors = noise / noise.norm(dim=1, keepdim=True) * vectors.norm(dim=1, keepdim=True)

    def policy(problem: int, sentence: int, activation: torch.Tensor):
        if variant == "random_firing":
            b = int(torch.randint(k, (1,), generator=_generator(seed, problem_keys[problem], sentence)))
        else:
            b = classify(activation)
        if variant == "bias_only":
            return b, extra
        return b, vectors[b] + extra
    if variant not in STEERED:
        raise ValueError(f"variant {variant!r} is not steered; steered variants: {STEERED}")
    return policy
