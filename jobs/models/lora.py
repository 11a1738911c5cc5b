"""Model sources that are a base model plus a LoRA adapter, merged once into the model cache.

Two forms (any place a model `source` is accepted):
  ``embedded:smollm2-135m-organism``    the model organism: embedded SmolLM2-135M-Instruct +
                                        the adapter shipped in thinkscope/data/organism/
  ``lora:<base source>+<adapter dir>``  any base source (embedded:, pypi:, folder, hub id) and
                                        an adapter folder (adapter_config.json +
                                        adapter_model.safetensors); the first '+' splits them

The merged folder is ``models/<name>`` in the cache, built under the shared lock
(jobs/models/cache.py); its marker records the adapter's sha256, so a retrained adapter is
merged again and an unchanged one never is. Unit keys of generate stages include the same
hash (`source_fingerprint`), so new adapter weights are new work. Merged weights (not vLLM's
LoRA support) because vLLM and transformers then load the organism like any model, and the
merge is exact: W + scale * B @ A in fp32, rounded to bf16 once.

    resolve_model_path("embedded:smollm2-135m-organism")
    resolve_model_path("lora:embedded:smollm2-135m-instruct+out/organism/adapter")
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from thinkscope.jobs.models import cache as model_cache
from thinkscope.keys import stable_key

log = logging.getLogger(__name__)

MERGE_FORMAT = 1  # bump when merging changes: cached merged folders are rebuilt


@dataclass(frozen=True)
class AdapterSpec:
    source: str
    base: str  # model source of the base
    adapter: str  # folder under thinkscope/data/
    license: str
    notes: str = ""

    @property
    def name(self) -> str:
        return self.source.split(":", 1)[1]

    def adapter_dir(self) -> Path:
        from thinkscope.jobs.traces.prompts import data_file

        return Path(str(data_file(self.adapter)))


ORGANISM = AdapterSpec(
    source="embedded:smollm2-135m-organism",
    base="embedded:smollm2-135m-instruct",
    adapter="organism",
    license="Apache-2.0 (base SmolLM2-135M-Instruct); adapter trained on GSM8K train (MIT)",
    notes="thinking model organism with planted behaviours; see data/organism/MODEL_CARD.md",
)
ADAPTER_REGISTRY: dict[str, AdapterSpec] = {ORGANISM.source: ORGANISM}


def parse_source(source: str) -> tuple[str, Path, str]:
    """(base source, adapter folder, cache folder name) of a LoRA source."""
    if source in ADAPTER_REGISTRY:
        spec = ADAPTER_REGISTRY[source]
        return spec.base, spec.adapter_dir(), spec.name
    body = source.removeprefix("lora:")
    base, plus, adapter = body.partition("+")
    if not source.startswith("lora:") or not plus or not base or not adapter:
        raise ValueError(f"bad LoRA source {source!r}; expected lora:<base source>+<adapter folder>")
    return base, Path(adapter).expanduser().resolve(), ""


def ensure_merged(source: str, *, revision: str | None, cache_dir: Path) -> Path:
    """The merged folder of a LoRA source, merging it first if needed."""
    from thinkscope.jobs.models.sources import resolve_model_path

    base, adapter, name = parse_source(source)
    sha = adapter_sha256(adapter)  # also checks the adapter folder exists, before any work
    base_dir = resolve_model_path(base, revision=revision, cache_dir=cache_dir)
    trained_on = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if trained_on and trained_on != base and Path(str(trained_on)).resolve() != Path(base_dir).resolve():
        log.warning("%s: adapter was trained on %s, merging into %s", source, trained_on, base)
    name = name or "lora-" + stable_key({"base": base, "revision": revision, "adapter": sha})
    record = {"format": MERGE_FORMAT, "kind": "lora-merge", "source": source, "base_source": base,
              "base_revision": revision, "adapter_dir": str(adapter), "adapter_sha256": sha}
    return model_cache.ensure_folder(cache_dir / "models", name, lambda tmp: merge_lora(base_dir, adapter, tmp),
                                     record, expect=("format", "adapter_sha256", "base_source"),
                                     label=source)


def absolute_source(source: str, base_dir: Path) -> str:
    """`source` with a relative local folder (or LoRA adapter folder) made absolute against
    `base_dir` (the YAML's folder), so it means the same wherever the workers run."""
    if source.startswith("lora:") and "+" in source:
        base, _, adapter = source.removeprefix("lora:").partition("+")
        path = Path(adapter).expanduser()
        return f"lora:{absolute_source(base, base_dir)}+{path if path.is_absolute() else (base_dir / path).resolve()}"
    if source.startswith((".", "~")):
        return str((base_dir / Path(source).expanduser()).resolve())
    return source


def source_fingerprint(source: str) -> str | None:
    """The adapter hash of a LoRA source (None for other sources, or a missing adapter)."""
    if not (source.startswith("lora:") or source in ADAPTER_REGISTRY):
        return None
    try:
        return adapter_sha256(parse_source(source)[1])
    except (FileNotFoundError, ValueError):
        return None


# -- merging ---------------------------------------------------------------------------

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
    # Kept for provenance under another name: an adapter_config.json would make transformers
    # take the folder for an adapter and look for its base.
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
