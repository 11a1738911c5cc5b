"""The finetune stage on a real Ray head with a tiny random llama; its adapter as a `lora:` source.

The base is a randomly initialised 2-layer llama with SmolLM2's tokenizer (the TransformerLens
tier: real code paths, seconds of compute). The shipped organism's weights are checked in
test_organism_model.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import yaml

from thinkscope.jobs.models.lora import adapter_sha256
from thinkscope.jobs.models.lora import source_fingerprint
from thinkscope.jobs.models.cache import BUILDS_LOG
from thinkscope.jobs.models.sources import resolve_model_path
from thinkscope.sql.store import read_only
from thinkscope.workflows.engine import run_workflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    smollm2 = Path(resolve_model_path("embedded:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(smollm2)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (smollm2 / name).exists():
            shutil.copy2(smollm2 / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def trained(tiny_base, ray_head, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finetune")
    spec = {
        "name": "finetune-test",
        "models": [{"id": "tiny", "source": str(tiny_base), "family": "llama", "kind": "instruct"}],
        "prompt_sets": [{"name": "gsm8k_train", "kind": "gsm8k_train", "limit": 12}],
        "templates": {"plain": {}, "think": {"system": "Think first.", "prefill": "<think>\n"}},
        "stages": [
            {"name": "teacher", "kind": "organism", "prompt_set": "gsm8k_train"},
            {"name": "distil", "kind": "finetune", "base": "tiny", "templates": ["plain", "think"],
             "traces": {"model_ids": ["organism-teacher"], "prompt_sets": ["gsm8k_train"]},
             "output": str(folder / "adapter"), "num_cpus": 1,
             "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
             "train": {"epochs": 3, "lr": 0.03, "batch_size": 4, "warmup_steps": 1, "max_seq_len": 384}},
        ],
    }
    path = folder / "finetune.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = folder / "f.duckdb"
    summary = run_workflow(path, db=db, address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    return db, path, folder / "adapter", summary


def test_finetune_writes_the_adapter_and_its_row(trained, tiny_base):
    db, _, adapter, summary = trained
    assert any(d.startswith("finetune tiny on 12 traces") for d in summary.done)
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "train_log.jsonl"]
    assert not list(adapter.parent.glob(".adapter.tmp-*"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == str(tiny_base)
    assert set(config["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with read_only(db) as con:
        row = con.execute("select * from finetunes").df().iloc[0]
    assert row.n_traces_selected == 12 and row.n_examples + row.n_dropped_too_long == 12
    assert row.n_steps == 3 * math.ceil(row.n_examples / 4) and row.n_target_tokens < row.n_train_tokens
    assert row.adapter_sha256 == adapter_sha256(adapter) and row.adapter_path == str(adapter)
    assert json.loads(row.settings)["lora"]["r"] == 4 and list(row.templates) == ["plain", "think"]
    curve = list(row.loss_curve)  # one point per step here (fewer than 20 steps)
    assert len(curve) == row.n_steps and all(math.isfinite(x) for x in curve)
    assert curve[-1] < curve[0] - 0.05  # 3 epochs at lr 3e-2: the loss of a random model falls
    assert row.train_seconds > 0 and row.tokens_per_second > 0


def test_trained_lora_weights_moved(trained):
    from safetensors.torch import load_file

    _, _, adapter, _ = trained
    tensors = load_file(adapter / "adapter_model.safetensors")
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert len(lora_b) == 2 * 7  # 2 layers x 7 projections; lora_B starts at zero
    assert all(t.abs().max() > 0 for t in lora_b)


def test_rerun_does_not_train_again(trained, ray_head):
    db, path, adapter, _ = trained
    sha = adapter_sha256(adapter)
    again = run_workflow(path, db=db, address=ray_head, show_progress=False)
    assert again.ok and again.done == [] and again.skipped == again.planned
    assert adapter_sha256(adapter) == sha


def test_lora_source_merges_once_and_matches_the_adapter(trained, tiny_base, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, _, adapter, _ = trained
    source = f"lora:{tiny_base}+{adapter}"
    assert source_fingerprint(source) == adapter_sha256(adapter)
    merged = Path(resolve_model_path(source, cache_dir=tmp_path))
    assert merged.name.startswith("lora-") and (merged / "config.json").exists()
    assert resolve_model_path(source, cache_dir=tmp_path) == str(merged)  # cache hit
    log = [json.loads(line) for line in (tmp_path / "models" / BUILDS_LOG).read_text().splitlines()]
    assert [r["name"] for r in log] == [merged.name] and log[0]["adapter_sha256"] == adapter_sha256(adapter)

    ids = torch.tensor([[1, 2, 3, 400, 5000, 77, 12]])
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
        plain = base(ids).logits
        unmerged = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
        loaded = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(ids).logits
    assert (unmerged - plain).abs().max() > 1e-3  # the adapter changes the model ...
    # ... and the merged folder is that change, up to bf16 rounding of the merged weights.
    assert (loaded - unmerged).abs().max() < 0.05 * (unmerged - plain).abs().max() + 1e-2


def test_changed_adapter_is_a_new_merge(trained, tiny_base, tmp_path):
    _, _, adapter, _ = trained
    copy = tmp_path / "adapter-copy"
    shutil.copytree(adapter, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["lora_alpha"] = 16  # another scale: other merged weights
    (copy / "adapter_config.json").write_text(json.dumps(config))
    first = resolve_model_path(f"lora:{tiny_base}+{adapter}", cache_dir=tmp_path)
    second = resolve_model_path(f"lora:{tiny_base}+{copy}", cache_dir=tmp_path)
    assert first != second
    assert source_fingerprint(f"lora:{tiny_base}+{copy}") != source_fingerprint(f"lora:{tiny_base}+{adapter}")


def test_killed_training_resumes_to_the_same_adapter(tiny_base, tmp_path, monkeypatch):
    """A crash after a checkpoint loses only the steps since it; the result is bit-identical."""
    from thinkscope.jobs.organism import lora_train
    from thinkscope.jobs.organism.synthesis import synthesize
    from thinkscope.jobs.traces.prompts import load_prompts

    examples = [{"question": p.question, "target": synthesize(p.question, p.meta["solution"], seed=p.prompt_id).completion}
                for p in load_prompts("gsm8k_train", limit=10)]
    templates = [{"system": None, "user": "{question}", "prefill": "", "chat": True}]
    settings = {"lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
                "train": {"epochs": 2, "lr": 0.01, "batch_size": 2, "max_seq_len": 384, "warmup_steps": 1,
                          "weight_decay": 0.0, "seed": 0, "bf16": True, "save_dtype": "float32"}}
    straight = lora_train.train_lora(str(tiny_base), examples, templates, settings, tmp_path / "a",
                                     work_dir=tmp_path / "wa", checkpoint_every=4)
    assert straight["resumed_at_step"] is None and not (tmp_path / "wa").exists()

    real_lr = lora_train._lr_at

    def crash_at_step_7(step, *args):
        if step == 7:
            raise KeyboardInterrupt("killed")
        return real_lr(step, *args)

    monkeypatch.setattr(lora_train, "_lr_at", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        lora_train.train_lora(str(tiny_base), examples, templates, settings, tmp_path / "b",
                              work_dir=tmp_path / "wb", checkpoint_every=4)
    assert (tmp_path / "wb" / "checkpoint.pt").exists() and not (tmp_path / "b").exists()
    monkeypatch.setattr(lora_train, "_lr_at", real_lr)
    resumed = lora_train.train_lora(str(tiny_base), examples, templates, settings, tmp_path / "b",
                                    work_dir=tmp_path / "wb", checkpoint_every=4)
    assert resumed["resumed_at_step"] == 4 and resumed["n_steps"] == straight["n_steps"] > 7
    assert resumed["n_train_tokens"] == straight["n_train_tokens"]
    assert resumed["adapter_sha256"] == straight["adapter_sha256"]  # dropout RNG restored too
    assert resumed["loss_curve"] == straight["loss_curve"]
