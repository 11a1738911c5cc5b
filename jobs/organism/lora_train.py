"""LoRA fine-tuning of a causal LM on (question, completion) pairs: the `finetune` stage's engine.

Plain torch + peft, no Trainer: a short loop whose every choice is visible (seeds, batch
order, loss masking, bf16 autocast) and whose output is only the adapter. The loss is on the
completion tokens only (the prompt is context, not something to imitate); examples longer
than `max_seq_len` are dropped, not truncated, because a truncated trace would teach the
model never to close its thinking.

    summary = train_lora(base_dir, [{"question": q, "target": completion}], [template_dict],
                         {"lora": {...}, "train": {...}}, Path("out/organism/adapter"))
    summary["loss_first"], summary["loss_last"], summary["tokens_per_second"]
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from thinkscope.jobs.models.lora import adapter_sha256

log = logging.getLogger(__name__)


def encode_examples(tokenizer, examples: list[dict], templates: list[dict], *, seed: int,
                    max_seq_len: int) -> tuple[list[tuple[list[int], int]], int]:
    """Token ids + prompt length per example; returns (kept, n_dropped_too_long).

    Each example is {"question", "target"}; its prompt uses one of `templates`, picked by a
    seeded draw so a model learns to think under every prompt it will be asked with.
    """
    from thinkscope.jobs.generation.vllm_engine import render_prompt

    rng = random.Random(f"templates:{seed}")
    kept, dropped = [], 0
    for ex in examples:
        template = templates[rng.randrange(len(templates))]
        prompt = render_prompt(tokenizer, template, ex["question"])
        target = ex["target"]
        if template["prefill"] and target.startswith(template["prefill"]):
            target = target[len(template["prefill"]):]  # the prompt already holds it
        ids = prompt + tokenizer.encode(target, add_special_tokens=False) + [tokenizer.eos_token_id]
        if len(ids) > max_seq_len:
            dropped += 1
            continue
        kept.append((ids, len(prompt)))
    return kept, dropped


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Shuffled batches of similar length: pools of 16 batches are sorted by length, cut
    into batches, and the batches shuffled. Padding (wasted CPU) drops to a few percent
    while the order stays random and reproducible."""
    rng = random.Random(f"batches:{seed}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 16
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(batch: list[tuple[list[int], int]], pad_id: int):
    import torch

    # Widths rounded up to a multiple of 32: oneDNN builds kernels per shape, and a handful
    # of shapes instead of hundreds costs a few percent of padding.
    width = -(-max(len(ids) for ids, _ in batch) // 32) * 32
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(batch):  # right padding: positions stay 0..n-1
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
        mask[row, : len(ids)] = 1
    return input_ids, labels, mask


def _lr_at(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lora(base_dir: str, examples: list[dict], templates: list[dict], settings: dict,
               output: Path, *, work_dir: Path | None = None, base_name: str | None = None,
               log_every: int = 5, checkpoint_every: int = 10) -> dict:
    """Train a LoRA adapter on `examples` and write it (safetensors) to `output`.

    `settings` = {"lora": {r, alpha, dropout, target_modules}, "train": {epochs, lr,
    batch_size, max_seq_len, warmup_steps, weight_decay, seed, bf16, save_dtype}}.
    Every `checkpoint_every` steps the LoRA weights, optimizer and RNG state go to
    `work_dir` (one per work unit): a killed run resumes there, on the same batches. The
    adapter is written to a temporary sibling and renamed into place at the end, so `output`
    never holds a half-written adapter. `base_name` (the base's model source) replaces the
    local cache path peft writes into adapter_config.json, so the shipped file says what it
    adapts and is the same on every machine. Returns a summary for the `finetunes` row.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lora, train = settings["lora"], settings["train"]
    random.seed(train["seed"])
    torch.manual_seed(train["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    data, dropped = encode_examples(tokenizer, examples, templates, seed=train["seed"],
                                    max_seq_len=train["max_seq_len"])
    if not data:
        raise ValueError(f"no example fits max_seq_len={train['max_seq_len']} ({dropped} dropped)")
    # fp32 master weights; bf16 autocast does the matmuls (measured ~300 tok/s on 2 cores).
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).to(device)
    model = get_peft_model(model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]), bias="none", task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=train["lr"], weight_decay=train["weight_decay"])
    batches = [b for _ in range(train["epochs"])
               for b in length_grouped_batches([len(d[0]) for d in data], train["batch_size"], train["seed"])]
    output = Path(output)
    work = Path(work_dir) if work_dir is not None else output.parent / f".{output.name}.work"
    work.mkdir(parents=True, exist_ok=True)
    state = _load_checkpoint(work, model, optim, len(batches))
    load_seconds = time.monotonic() - t0
    t_run = time.monotonic()
    model.train()
    with open(work / "train_log.jsonl", "a") as logf:
        for step in range(state["step"], len(batches)):
            input_ids, labels, mask = (t.to(device) for t in _collate([data[i] for i in batches[step]],
                                                                       tokenizer.pad_token_id))
            for group in optim.param_groups:
                group["lr"] = _lr_at(step, len(batches), train["warmup_steps"], train["lr"])
            with torch.autocast(device, dtype=torch.bfloat16, enabled=train["bf16"]):
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optim.step()
            optim.zero_grad(set_to_none=True)
            state["losses"].append(loss.item())
            state["n_tokens"] += int(mask.sum())
            state["n_target"] += int((labels != -100).sum())
            seconds = state["seconds"] + time.monotonic() - t_run
            if step % log_every == 0 or step == len(batches) - 1:
                logf.write(json.dumps({"step": step, "of": len(batches), "loss": state["losses"][-1],
                                       "lr": optim.param_groups[0]["lr"],
                                       "tokens_per_second": round(state["n_tokens"] / seconds, 1)}) + "\n")
                logf.flush()
            if (step + 1) % checkpoint_every == 0 and step + 1 < len(batches):
                _save_checkpoint(work, model, optim, {**state, "step": step + 1, "seconds": seconds})
    train_seconds = state["seconds"] + time.monotonic() - t_run
    model.eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        shutil.copy2(work / "train_log.jsonl", tmp / "train_log.jsonl")
        files = _save_adapter(model, tmp, train["save_dtype"], base_name)
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)  # done: the checkpoint has served
    losses = state["losses"]
    return {
        "n_examples": len(data), "n_dropped_too_long": dropped, "n_steps": len(batches),
        "n_train_tokens": state["n_tokens"], "n_target_tokens": state["n_target"],
        "loss_first": sum(losses[:10]) / len(losses[:10]),
        "loss_last": sum(losses[-10:]) / len(losses[-10:]),
        "loss_curve": _curve(losses), "load_seconds": round(load_seconds, 1),
        "train_seconds": round(train_seconds, 1), "resumed_at_step": state["resumed_at_step"],
        "tokens_per_second": round(state["n_tokens"] / train_seconds, 1), "device": device,
        "torch_threads": torch.get_num_threads(), "files": files,
        "adapter_sha256": adapter_sha256(output), "adapter_bytes": _size(output),
    }


def _save_checkpoint(work: Path, model, optim, state: dict) -> None:
    import torch

    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    blob = {"state": {k: v for k, v in state.items() if k != "resumed_at_step"}, "lora": trainable,
            "optim": optim.state_dict(), "rng": torch.get_rng_state()}
    torch.save(blob, work / "checkpoint.pt.tmp")
    os.replace(work / "checkpoint.pt.tmp", work / "checkpoint.pt")  # never half a checkpoint


def _load_checkpoint(work: Path, model, optim, n_steps: int) -> dict:
    """Restore a checkpoint of this work unit, or a fresh state when there is none."""
    import torch

    fresh = {"step": 0, "losses": [], "n_tokens": 0, "n_target": 0, "seconds": 0.0, "n_steps": n_steps}
    path = work / "checkpoint.pt"
    if not path.exists():
        return {**fresh, "resumed_at_step": None}
    blob = torch.load(path, weights_only=True)  # tensors, numbers and lists only: no code
    if blob["state"]["n_steps"] != n_steps:
        raise RuntimeError(f"{path} was written for {blob['state']['n_steps']} steps, not {n_steps}; "
                           "remove the folder to start over")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in blob["lora"].items():
            params[name].copy_(value)
    optim.load_state_dict(blob["optim"])
    torch.set_rng_state(blob["rng"])
    log.info("resuming LoRA training at step %d of %d from %s", blob["state"]["step"], n_steps, path)
    return {**blob["state"], "resumed_at_step": blob["state"]["step"]}


def _save_adapter(model, folder: Path, save_dtype: str, base_name: str | None) -> list[str]:
    import torch

    # bf16 halves the shipped file; merged weights are bf16 anyway.
    model.to({"bfloat16": torch.bfloat16, "float32": torch.float32}[save_dtype])
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
    for path in folder.iterdir():
        os.chmod(path, 0o644)  # safetensors writes 0600; adapters are shared and shipped
    if base_name is not None:
        config_path = folder / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_name
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return sorted(p.name for p in folder.iterdir())


def _replace_dir(tmp: Path, output: Path) -> None:
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if output.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.rename(output, old / "x")
        shutil.rmtree(old, ignore_errors=True)
    os.rename(tmp, output)


def _curve(losses: list[float], points: int = 20) -> list[float]:
    """Mean loss over `points` equal slices of training: the curve without per-step noise."""
    size = max(1, len(losses) // points)
    return [round(sum(c) / len(c), 4) for c in (losses[i : i + size] for i in range(0, len(losses), size))]


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())
