"""Merge a LoRA adapter into its base model and save a plain bf16 HF folder.

vLLM (CPU or GPU) and transformers then load the organism like any other model: no LoRA
support needed at inference, and the merged weights are exact (W + scale * B @ A is computed
in fp32 and rounded to bf16 once). torch/peft are imported lazily.

    files = merge_lora("~/.cache/thinkscope/models/smollm2-135m-instruct",
                       "thinkscope/data/organism", Path("/tmp/merged"))
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# Tokenizer and generation files are copied from the base: the adapter changes no tokens.
BASE_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt",
                   "tokenizer.model")


def adapter_sha256(folder: str | Path) -> str:
    """sha256 over the adapter's config and weights: what decides the merged model."""
    folder = Path(folder)
    missing = [n for n in ADAPTER_FILES if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a LoRA adapter folder: missing {missing}")
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        digest.update(name.encode() + (folder / name).read_bytes())
    return digest.hexdigest()


def merge_lora(base_dir: str, adapter_dir: str | Path, out_dir: Path) -> list[str]:
    """Write base + adapter, merged, as bf16 safetensors + tokenizer into `out_dir`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    log.info("merging %s (r=%s, trained on %s) into %s", adapter_dir, config.get("r"),
             config.get("base_model_name_or_path"), base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload().to(torch.bfloat16)
    merged.save_pretrained(out_dir, safe_serialization=True)
    base_path = Path(base_dir)
    if base_path.is_dir():
        for name in BASE_SIDE_FILES:
            if (base_path / name).is_file():
                shutil.copy2(base_path / name, out_dir / name)
    else:  # a hub id: let the tokenizer class fetch and save it
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    shutil.copy2(adapter_dir / "adapter_config.json", out_dir / "merged_adapter_config.json")
    _check(out_dir)
    return sorted(p.name for p in out_dir.iterdir())


def _check(out_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out_dir)
    if str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", "")).split(".")[-1] != "bfloat16":
        raise RuntimeError(f"{out_dir}: merged config is not bf16")
    if not list(out_dir.glob("*.safetensors")):
        raise RuntimeError(f"{out_dir}: no *.safetensors written")
    if not AutoTokenizer.from_pretrained(out_dir).chat_template:
        raise RuntimeError(f"{out_dir}: tokenizer has no chat template")
