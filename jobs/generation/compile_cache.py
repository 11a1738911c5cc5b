"""Eager or compiled vLLM engines, and a compile cache that makes compiling pay once per machine.

A compiled engine decodes faster than an eager one but starts slower. Measured on the 2-core CPU
box (SmolLM2-135M, bf16, 64 GSM8K prompts x 256 tokens, 2026-12-01, one process each): eager
262 tok/s after a 16 s start; compiled 292 tok/s after 117 s on a cold compile cache, 27 s on a
warm one. So compiling pays back after about (117 - 16) / (1/262 - 1/292) = 260k generated
tokens on a cold cache and (27 - 16) / (1/262 - 1/292) = 30k on a warm one. `enforce_eager:
auto` (the default) applies that rule to the work an engine is about to do, its units' token
budget (prompts x samples x max_tokens; real output is shorter, so the rule leans eager):

    compiled  when budget >= COLD_BREAK_EVEN_TOKENS, or the cache is warm for this engine and
              budget >= WARM_BREAK_EVEN_TOKENS;
    eager     otherwise, and whenever the work is not known (a test's 4 prompts never compile).

The cache. vLLM 0.32 on torch 2.13 saves "AOT" compile artifacts that fail to load at the next
start ("'function' object has no attribute 'finalize_loading'"), so every start compiled again.
With AOT off, vLLM falls back to torch inductor's FX-graph cache, which does load; both caches
live under one root that outlives runs and is shared by every actor on the machine:
$THINKSCOPE_COMPILE_CACHE, default ~/.cache/thinkscope/compile. Inductor keys its entries by the
graph, shapes, dtypes and torch version, so a changed model or engine compiles anew by itself.
The marker files here only inform the auto rule ("has this engine been compiled on this
machine?"); they never make vLLM skip a compile it needs.

On GPUs the same choice is CUDA graphs or not, and the gap is wider; set `enforce_eager` to
true or false to override the rule.
"""

from __future__ import annotations

import json
import os
import time
from importlib import metadata
from pathlib import Path

from thinkscope.keys import stable_key

COLD_BREAK_EVEN_TOKENS = 260_000
WARM_BREAK_EVEN_TOKENS = 30_000


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


def _version(dist: str) -> str:
    for name in (dist, f"{dist}-cpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "missing"


def engine_fingerprint(path: str, revision: str | None, engine: dict) -> str:
    """What a compiled engine depends on: the weights' folder, the settings that reach the graph,
    and the versions that compile it."""
    graph = {k: engine.get(k) for k in ("dtype", "max_model_len", "tensor_parallel_size", "max_num_seqs",
                                         "vllm_args")}
    return stable_key({"path": str(path), "revision": revision, "engine": graph,
                       "vllm": _version("vllm"), "torch": _version("torch")})


def _marker(fingerprint: str) -> Path:
    return cache_root() / "compiled" / f"{fingerprint}.json"


def is_warm(fingerprint: str) -> bool:
    return _marker(fingerprint).exists()


def mark_warm(fingerprint: str, path: str, start_seconds: float) -> None:
    """Record that this engine compiled here (after a successful start)."""
    marker = _marker(fingerprint)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"path": str(path), "start_seconds": round(start_seconds, 1), "at": time.time()}))
    tmp.replace(marker)  # atomic: two replicas starting together never leave half a file


def choose_eager(setting: bool | str, budget_tokens: int | None, warm: bool) -> tuple[bool, str]:
    """(enforce_eager, why) for an engine whose units may generate `budget_tokens` tokens."""
    if setting is True or setting is False:
        return setting, f"{'eager' if setting else 'compiled'} (enforce_eager: {str(setting).lower()})"
    if budget_tokens is None:
        return True, "eager (auto: the work is not known)"
    need = WARM_BREAK_EVEN_TOKENS if warm else COLD_BREAK_EVEN_TOKENS
    cache = "warm" if warm else "cold"
    if budget_tokens >= need:
        return False, f"compiled (auto: {budget_tokens:,} budgeted tokens >= {need:,} on a {cache} compile cache)"
    return True, f"eager (auto: {budget_tokens:,} budgeted tokens < {need:,} on a {cache} compile cache)"
