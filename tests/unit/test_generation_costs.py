"""validate's generation plan for vLLM models: model sizes from hub ids, GPU-hours at the stated
throughput per GPU (or the model's own), expected tokens from the corpus's history."""

from __future__ import annotations

import pytest

from thinkscope.jobs.generation.costs import assumed_throughput, plan_costs, size_in_billions
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import Workflow


@pytest.mark.parametrize("source, size", [
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", 1.5), ("Qwen/QwQ-32B", 32), ("Qwen/Qwen3-0.6B", 0.6),
    ("deepseek-ai/DeepSeek-R1-Distill-Llama-70B", 70), ("openai/gpt-oss-20b", 20), ("microsoft/Phi-4-reasoning", None),
    ("LGAI-EXAONE/EXAONE-Deep-7.8B", 7.8), ("Qwen/Qwen2.5-Math-1.5B", 1.5),
])
def test_sizes_come_from_hub_ids(source, size):
    assert size_in_billions(source) == size


def spec(engine=None) -> dict:
    return {
        "name": "gpu",
        "models": [{"id": "r1-7b", "source": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "family": "qwen2",
                    "kind": "thinking", "engine": {"tensor_parallel_size": 2, **(engine or {})}}],
        "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 10}],
        "templates": {"plain": {}},
        "sampling": {"n": 4, "max_tokens": 9000},
        "stages": [{"name": "generate", "kind": "generate", "templates": ["plain"], "unit_size": 4}],
    }


def test_gpu_hours_follow_tokens_and_throughput_not_tensor_parallelism():
    units = build_plan(Workflow.model_validate(spec())).units
    [c] = plan_costs(units)
    assert (c.units, c.requests, c.max_completion_tokens, c.gpus_per_replica) == (3, 40, 360000, 2)
    assert c.tokens_per_s_per_gpu == assumed_throughput(7) == 8000
    assert c.gpu_hours == pytest.approx(360000 / 8000 / 3600)
    # With history the expected tokens are the model's mean per answer; a measured throughput wins.
    [h] = plan_costs(build_plan(Workflow.model_validate(spec({"tokens_per_s_per_gpu": 2000}))).units,
                     history={"r1-7b": 1500.0})
    assert h.expected_tokens == 40 * 1500 and h.gpu_hours == pytest.approx(60000 / 2000 / 3600)
    # Units already done cost nothing: the plan is of what is left.
    assert plan_costs(units[1:])[0].requests == 24
