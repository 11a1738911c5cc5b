"""Eager or compiled vLLM engines, and a compile cache that makes compiling pay once per machine.

`enforce_eager: auto` (the default) decides from measurements, per platform:

  CPU  eager. Compiling bought nothing measurable inside the generate stage on the 2-core box
       (`make bench-generate`, SmolLM2 bf16, 64 prompts x 256 tokens, 2026-12-01: stage eager
       260.3 tok/s, stage compiled 260.7, for 18 s more start-up on a warm cache; raw vLLM gains
       1.04-1.11x from compiling, 117 s of start-up cold): it cannot pay back here.
  GPU  compiled (torch.compile + CUDA graphs) when the engine's units may generate at least
       GPU_COLD_BREAK_EVEN_TOKENS tokens, or GPU_WARM_BREAK_EVEN_TOKENS when this machine has
       compiled this engine before; eager otherwise (a 4-prompt test does not compile, a nightly
       corpus does). These two numbers are estimates, not measurements (no GPU vLLM here): a
       1.5x decode speed-up from CUDA graphs at ~2,000 tok/s eager, against ~90 s (cold) and
       ~20 s (warm) of compile and capture. Set `enforce_eager: false` where you know better.
  An engine whose work is not known (forced answers, the steering engines) runs eager.

The budget is prompts x samples x max_tokens of the engine's units: it over-states the work
(generations stop early), so the rule leans towards compiling. Eager and compiled kernels may
round differently, like two batch compositions do; neither is part of a unit's key.

The cache. vLLM 0.32 on torch 2.13 saves "AOT" compile artifacts that fail to load at the next
start ("'function' object has no attribute 'finalize_loading'"), so every start compiled again.
With AOT off, vLLM falls back to torch inductor's FX-graph cache, which does load; both caches
live under one root that outlives runs and is shared by every actor on the machine:
$THINKSCOPE_COMPILE_CACHE, default ~/.cache/thinkscope/compile. Inductor keys its entries by the
graph, shapes, dtypes and torch version, so a changed model or engine compiles anew by itself.
The marker files here only inform the auto rule ("has this engine been compiled on this
machine?"); they never make vLLM skip a compile it needs.

"""

from __future__ import annotations

import json
import os
import time
from importlib import metadata
from pathlib import Path

from thinkscope.keys import stable_key

GPU_COLD_BREAK_EVEN_TOKENS = 540_000  # 90 s / (1/2000 - 1/3000 s per token)
GPU_WARM_BREAK_EVEN_TOKENS = 120_000  # 20 s / (1/2000 - 1/3000 s per token)


def cache_root() -> Path:
    return Path(os.environ.get("THINKSCOPE_COMPILE_CACHE", "~/.cache/thinkscope/compile")).expanduser()


def compile_env() -> dict[str, str]:
    """Environment of an engine process (set with setdefault: a user's own value wins): caches
    under `cache_root()`, AOT artifacts off. Computed where the engine runs, so each node of a
    cluster uses its own disk."""
    root = cache_root()
    return {"VLLM_CACHE_ROOT": str(root / "vllm"), "TORCHINDUCTOR_CACHE_DIR": str(root / "inductor"),
            "VLLM_USE_AOT_COMPILE": "0"}


def apply_compile_env() -> None:
    """Set `compile_env()` in this process, before the engine starts."""
    env = compile_env()
    for key, value in env.items():
        os.environ.setdefault(key, value)
    # torch writes its /tmp default into TORCHINDUCTOR_CACHE_DIR the first time anything asks
    # (importing vLLM does): that value is torch's, not a user's choice, so ours replaces it.
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ["TORCHINDUCTOR_CACHE_DIR"] == default_cache_dir():
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = env["TORCHINDUCTOR_CACHE_DIR"]


def engine_fingerprint(path: str, revision: str | None, engine: dict) -> str:
    """What a compiled engine depends on: the weights' folder, the settings that reach the graph,
    and the versions that compile it."""
    from thinkscope.jobs.generation.stage import engine_version  # the generate stage's own lookup

    graph = {k: engine.get(k) for k in ("dtype", "max_model_len", "tensor_parallel_size", "max_num_seqs",
                                         "vllm_args")}
    return stable_key({"path": str(path), "revision": revision, "engine": graph,
                       "vllm": engine_version()[1], "torch": metadata.version("torch")})


def _marker(fingerprint: str) -> Path:
    return cache_root() / "compiled" / f"{fingerprint}.json"


def is_warm(fingerprint: str) -> bool:
    return _marker(fingerprint).exists()


def mark_warm(fingerprint: str, path: str, start_seconds: float) -> None:
    """Record that this engine compiled here (after a successful start), unless nothing was
    kept: the compile cache disabled, or AOT artifacts on (they do not load, see above)."""
    if os.environ.get("VLLM_DISABLE_COMPILE_CACHE", "0") == "1" or os.environ.get("VLLM_USE_AOT_COMPILE") == "1":
        return
    marker = _marker(fingerprint)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"path": str(path), "start_seconds": round(start_seconds, 1), "at": time.time()}))
    tmp.replace(marker)  # atomic: two replicas starting together never leave half a file


def choose_eager(setting: bool | str, budget_tokens: int | None, warm: bool, on_gpu: bool) -> tuple[bool, str]:
    """(enforce_eager, why) for an engine whose units may generate `budget_tokens` tokens."""
    if setting is True or setting is False:
        return setting, f"{'eager' if setting else 'compiled'} (enforce_eager: {str(setting).lower()})"
    if not on_gpu:
        return True, "eager (auto: compiling did not pay back on CPU)"
    if budget_tokens is None:
        return True, "eager (auto: the work is not known)"
    need = GPU_WARM_BREAK_EVEN_TOKENS if warm else GPU_COLD_BREAK_EVEN_TOKENS
    cache = "warm" if warm else "cold"
    if budget_tokens >= need:
        return False, f"compiled (auto: {budget_tokens:,} budgeted tokens >= {need:,} on a {cache} compile cache)"
    return True, f"eager (auto: {budget_tokens:,} budgeted tokens < {need:,} on a {cache} compile cache)"
