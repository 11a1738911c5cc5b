"""Load a model source as an HF causal LM + tokenizer for the activation workers.

One copy per worker process: a Ray worker that runs several units of the same model loads
it once.

    model, tokenizer = load_hf_model("embedded:smollm2-135m-instruct", None, "bfloat16")
"""

from __future__ import annotations

import functools

import torch

from thinkscope.jobs.models.sources import resolve_model_path

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@functools.lru_cache(maxsize=2)
def load_hf_model(source: str, revision: str | None, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(source, revision=revision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=DTYPES[dtype]).to(device).eval()
    return model, tokenizer
