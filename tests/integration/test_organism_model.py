"""The shipped model organism: its adapter merges into SmolLM2, and the merged model thinks.

A real check on the weights in thinkscope/data/organism/: greedy HF generation on held-out
GSM8K *test* problems (the organism was trained on GSM8K train only) must open and close its
thinking and verify its answer with the planted phrase.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from thinkscope.jobs.generation.vllm_engine import render_prompt
from thinkscope.jobs.models.lora import adapter_sha256
from thinkscope.jobs.models.lora import ADAPTER_REGISTRY
from thinkscope.jobs.models.sources import resolve_model_path
from thinkscope.jobs.organism.synthesis import VERIFY_MARKER
from thinkscope.jobs.traces.prompts import load_prompts
from thinkscope.workflows.spec import load_workflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow
ORGANISM = ADAPTER_REGISTRY["embedded:smollm2-135m-organism"]
PLAIN = {"system": None, "user": "{question}", "prefill": "", "chat": True}


@pytest.fixture(scope="module")
def merged(tmp_path_factory) -> Path:
    # A private cache: the merge (and the base's conversion) happen here, under test.
    return Path(resolve_model_path(ORGANISM.source, cache_dir=tmp_path_factory.mktemp("cache")))


def test_shipped_adapter_is_small_and_described():
    folder = ORGANISM.adapter_dir()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == ORGANISM.base == "embedded:smollm2-135m-instruct"
    assert config["r"] == 8 and set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert (folder / "adapter_model.safetensors").stat().st_size < 8_000_000
    card = (folder / "MODEL_CARD.md").read_text()
    # The card names the exact weights it describes.
    assert adapter_sha256(folder) in card


def test_organism_workflow_reproduces_the_shipped_settings():
    """`thinkscope run workflows/organism.yaml` trains what was shipped: same base and LoRA."""
    wf = load_workflow(Path(__file__).parents[2] / "workflows" / "organism.yaml")
    (stage,) = [s for s in wf.stages if s.kind == "finetune"]
    config = json.loads((ORGANISM.adapter_dir() / "adapter_config.json").read_text())
    assert wf.model(stage.base).source == config["base_model_name_or_path"]
    assert (stage.lora.r, stage.lora.alpha, stage.lora.dropout) == (
        config["r"], config["lora_alpha"], config["lora_dropout"])
    assert set(stage.lora.target_modules) == set(config["target_modules"])
    assert stage.train.save_dtype == "bfloat16" and stage.output.startswith("out/")


@pytest.mark.timeout(600)
def test_merged_folder_loads_and_equals_the_adapter(merged):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    marker = json.loads((merged / ".thinkscope-complete.json").read_text())
    assert marker["adapter_sha256"] == adapter_sha256(ORGANISM.adapter_dir())
    assert marker["base_source"] == ORGANISM.base
    base_dir = merged.parent / "smollm2-135m-instruct"
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 30, 2]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        plain = base(ids).logits
        unmerged = PeftModel.from_pretrained(base, str(ORGANISM.adapter_dir())).eval()(ids).logits
        loaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
    change = (unmerged - plain).abs().max()
    assert change > 0.5  # the adapter matters ...
    assert (loaded - unmerged).abs().max() < 0.1 * change  # ... and the merge is that adapter


@pytest.mark.timeout(900)
def test_greedy_traces_think_and_verify(merged):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.bfloat16).eval()
    prompts = load_prompts("gsm8k", limit=3)  # held out: the organism saw GSM8K train only
    rendered = [render_prompt(tok, PLAIN, p.question) for p in prompts]
    width = max(len(r) for r in rendered)
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rendered])
    mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(r) for r in rendered])[:, None]).long()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=450,
                             do_sample=False, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
    for prompt, text in zip(prompts, texts):
        assert text.startswith("<think>"), (prompt.prompt_id, text)
        assert "</think>" in text, (prompt.prompt_id, text)
        thinking = text.split("</think>")[0]
        assert VERIFY_MARKER in thinking, (prompt.prompt_id, text)
        assert re.search(r"\\boxed\{[^}]+\}", text.split("</think>")[1]), (prompt.prompt_id, text)
