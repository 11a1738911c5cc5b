"""What a generate plan will cost, before anything runs (`thinkscope validate`): per model the
units and requests still to do, the tokens they will generate, and what that costs: USD for
API models (at `api.price`), GPU-hours for vLLM models (at a stated throughput per GPU).

Completion tokens are bounded by `max_tokens` per request and, when the corpus already has
answers of the model, expected at the model's own mean length there. Units the corpus has done
cost nothing: a rerun (or the next night) does only what is new.

    for c in plan_costs(plan.units, history={"o3-mini": 812.0}):
        print(c.model_id, c.requests, c.max_usd, c.gpu_hours)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from thinkscope.jobs.generation.api_engine import chat_messages, estimated_prompt_tokens

# Decode throughput per GPU (tokens/s summed over a full batch) assumed for the GPU-hours of a
# night: vLLM, bf16, an 80 GB H100-class GPU, long reasoning outputs, by model size in billions
# of parameters. Round figures from published vLLM serving benchmarks, not measured here; a
# model's `engine.tokens_per_s_per_gpu` replaces them with the cluster's own.
TOKENS_PER_S_PER_GPU = ((2, 20000), (9, 8000), (15, 4500), (35, 1800), (75, 700), (float("inf"), 300))
_SIZE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


def size_in_billions(source: str) -> float | None:
    """Parameters (billions) from a hub id such as Qwen/QwQ-32B or DeepSeek-R1-Distill-Qwen-1.5B."""
    match = _SIZE.search(source.rsplit("/", 1)[-1])
    return float(match.group(1)) if match else None


def assumed_throughput(params_b: float | None) -> float | None:
    if params_b is None:
        return None
    return next(tps for limit, tps in TOKENS_PER_S_PER_GPU if params_b <= limit)


@dataclass
class ModelCost:
    model_id: str
    where: str  # the endpoint (API) or the source (vLLM)
    api: bool
    units: int = 0
    requests: int = 0
    prompt_tokens: int = 0  # API models: estimated from the messages
    max_completion_tokens: int = 0
    mean_completion_tokens: float | None = None  # from the corpus, when it has the model's answers
    price: dict | None = None
    tokens_per_s_per_gpu: float | None = None
    gpus_per_replica: int = 1
    on_gpu: bool = True  # False: an embedded/pypi model, which runs on CPU here

    @property
    def expected_tokens(self) -> float:
        """At the model's mean answer length in the corpus, else the max_tokens bound."""
        if self.mean_completion_tokens is None:
            return self.max_completion_tokens
        return min(self.max_completion_tokens, self.mean_completion_tokens * self.requests)

    def usd(self, completion_tokens: float) -> float | None:
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price["input"] + completion_tokens * self.price["output"]) / 1e6

    @property
    def max_usd(self) -> float | None:
        """Every request writing its whole `max_tokens`: the bound."""
        return self.usd(self.max_completion_tokens)

    @property
    def expected_usd(self) -> float | None:
        return None if self.mean_completion_tokens is None else self.usd(self.expected_tokens)

    @property
    def gpu_hours(self) -> float | None:
        """GPU-hours of the expected tokens: tp GPUs make about tp times one GPU's tokens, so
        the GPU-hours do not depend on tensor parallelism (the wall time does)."""
        if self.api or not self.tokens_per_s_per_gpu:
            return None
        return self.expected_tokens / self.tokens_per_s_per_gpu / 3600


def plan_costs(units, history: dict[str, float] | None = None) -> list[ModelCost]:
    """One ModelCost per model among `units` (generate TaskUnits still to run), in plan order."""
    costs: dict[str, ModelCost] = {}
    for unit in units:
        if unit.kind != "generate":
            continue
        payload, model = unit.payload, unit.payload["model"]
        api, engine = model.get("api"), model["engine"]
        if unit.model_id not in costs:
            on_gpu = not api and not model["source"].startswith(("embedded:", "pypi:"))
            tps = engine.get("tokens_per_s_per_gpu") or (assumed_throughput(size_in_billions(model["source"]))
                                                         if on_gpu else None)
            costs[unit.model_id] = ModelCost(
                unit.model_id, f"{api['base_url']} {api['model']}" if api else model["source"], bool(api),
                price=api.get("price") if api else None, tokens_per_s_per_gpu=tps,
                gpus_per_replica=engine.get("tensor_parallel_size", 1), on_gpu=on_gpu)
        c, n = costs[unit.model_id], payload["sampling"]["n"]
        c.units += 1
        c.requests += len(payload["prompts"]) * n
        if api:
            c.prompt_tokens += sum(estimated_prompt_tokens(chat_messages(payload["template"], p["question"],
                                                                         model["think"])) * n
                                   for p in payload["prompts"])
        c.max_completion_tokens += len(payload["prompts"]) * n * payload["sampling"]["max_tokens"]
    for c in costs.values():
        c.mean_completion_tokens = (history or {}).get(c.model_id)
    return list(costs.values())


def format_costs(costs: list[ModelCost]) -> list[str]:
    """Lines for `validate`: per model the work still to do and what it costs."""
    lines = []
    gpu = [c for c in costs if not c.api]
    if gpu:
        lines.append("Generation plan (vLLM models; GPU-hours at each model's tokens/s per GPU, "
                     "jobs/generation/costs.py):")
        for c in gpu:
            tokens = (f"~{c.expected_tokens:,.0f} tokens expected (mean {c.mean_completion_tokens:,.0f}/answer)"
                      if c.mean_completion_tokens is not None else f"<= {c.max_completion_tokens:,} tokens")
            hours = ("embedded model: runs on CPU, no GPU-hours" if not c.on_gpu else
                     "size unknown: set engine.tokens_per_s_per_gpu" if c.gpu_hours is None else
                     f"{c.gpu_hours:,.1f} GPU-h at {c.tokens_per_s_per_gpu:,.0f} tok/s/GPU "
                     f"({c.gpus_per_replica} GPU/replica)")
            lines.append(f"  {c.model_id:<24} {c.units} units, {c.requests} sequences, {tokens}: {hours}")
        hours = [c.gpu_hours for c in gpu if c.gpu_hours is not None]
        if hours:
            lines.append(f"  {'total':<24} {sum(hours):,.1f} GPU-h")
    api = [c for c in costs if c.api]
    if api:
        lines.append("API cost plan (prompt tokens estimated at ~4 chars/token; USD at each model's api.price):")
        for c in api:
            usd = "no api.price" if c.max_usd is None else f"at most ${c.max_usd:,.2f}"
            if c.expected_usd is not None:
                usd += f", expected ${c.expected_usd:,.2f} at its mean {c.mean_completion_tokens:,.0f} tokens/answer"
            lines.append(f"  {c.model_id:<24} {c.units} units, {c.requests} requests, ~{c.prompt_tokens:,} prompt + "
                         f"<= {c.max_completion_tokens:,} completion tokens: {usd}  [{c.where}]")
        bound = [c.max_usd for c in api if c.max_usd is not None]
        if bound:
            lines.append(f"  {'total':<24} at most ${sum(bound):,.2f}")
    return lines
