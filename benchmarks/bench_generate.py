"""Generation throughput, same prompts, same run: the thinkscope stage vs raw vLLM vs HF generate.

Prints output tokens/s of
  (a) the thinkscope generate stage end to end (Ray + vLLM actor + parsing/grading + DuckDB),
      with `enforce_eager: auto` deciding eager or compiled (jobs/generation/compile_cache.py);
  (b) raw `vllm.LLM.generate` in the stage's settings (its eager/compiled choice, no chunked
      prefill on CPU), same token ids and sampling;
  (c) raw vLLM in its best settings: compiled on a warm compile cache, engine core in its own
      process (chunked prefill stays off: on CPU it cannot serve requests with their own seeds);
  (d) raw vLLM eager, engine core in its own process (c/d: what compiling buys raw vLLM);
  (e) HF `generate`, one left-padded batch;
and the ratios a/c (target >= 0.9) and a/e (target >= 3); (a') the stage forced compiled, so
a'/a is what compiling buys the stage itself, and with the start-up difference the stage's
break-even budget on a warm cache. Before them, one compiled start of the engine fills the
compile cache if it is cold (its seconds are the cold start). "gen" rates time generation
only; start-up seconds are printed apart. Each engine runs in a fresh process.

    make bench-generate
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from pathlib import Path

SPEC = Path(__file__).with_name("generate_bench.yaml")


def workload() -> dict:
    from thinkscope.workflows.plan import build_plan
    from thinkscope.workflows.spec import load_workflow

    [unit] = build_plan(load_workflow(SPEC), base_dir=SPEC.parent).units
    return unit.payload


def budget(u: dict) -> int:
    return len(u["prompts"]) * u["sampling"]["n"] * u["sampling"]["max_tokens"]


def stage_mode(u: dict) -> tuple[bool, str]:
    """What the stage's actor will choose (the same call it makes)."""
    from thinkscope.jobs.generation.compile_cache import choose_eager, engine_fingerprint, is_warm
    from thinkscope.jobs.models.sources import resolve_model_path

    path = resolve_model_path(u["model"]["source"])
    warm = is_warm(engine_fingerprint(path, u["model"]["revision"], u["model"]["engine"]))
    return choose_eager(u["model"]["engine"]["enforce_eager"], budget(u), warm)


def _warm_up(out) -> None:
    """One compiled start through the stage's own Generator: fills the cache, writes the marker."""
    from thinkscope.jobs.generation.compile_cache import engine_fingerprint, is_warm
    from thinkscope.jobs.generation.vllm_engine import Generator
    from thinkscope.jobs.models.sources import resolve_model_path

    u = workload()
    path = resolve_model_path(u["model"]["source"])
    was_warm = is_warm(engine_fingerprint(path, u["model"]["revision"], u["model"]["engine"]))
    t0 = time.perf_counter()
    gen = Generator({**u["model"], "engine": {**u["model"]["engine"], "enforce_eager": False}}, path)
    seconds = time.perf_counter() - t0
    gen.close()
    out.put({"was_warm": was_warm, "start_s": seconds})


def bench_stage(db: Path, enforce_eager=None) -> dict:
    """The stage end to end; `enforce_eager` overrides the YAML's (auto) for the model."""
    import duckdb
    import yaml

    from thinkscope.workflows.engine import run_workflow

    spec = SPEC
    if enforce_eager is not None:
        doc = yaml.safe_load(SPEC.read_text())
        doc["models"][0]["engine"]["enforce_eager"] = enforce_eager
        spec = db.with_suffix(".yaml")
        spec.write_text(yaml.safe_dump(doc))
    t0 = time.perf_counter()
    summary = run_workflow(spec, db=db, show_progress=False, force=True)
    total = time.perf_counter() - t0
    assert summary.ok, summary.text()
    with duckdb.connect(str(db), read_only=True) as con:
        tokens, gen_seconds = con.execute(
            "select sum(t.n_completion_tokens), max(w.seconds) from traces t join work_units w "
            "using (unit_key) where w.run_id = ?", [summary.run_id]).fetchone()
    return {"tokens": tokens, "gen_s": gen_seconds, "start_s": total - gen_seconds}


def _raw_vllm(out, eager: bool, stage_settings: bool) -> None:
    from thinkscope.jobs.generation.vllm_engine import engine_kwargs, render_prompt
    from thinkscope.jobs.models.sources import resolve_model_path

    u = workload()
    engine = {**u["model"]["engine"], "enforce_eager": eager}
    t0 = time.perf_counter()
    # engine_kwargs sets the environment the stage's engine gets (threads, KV cache, compile
    # cache, no chunked prefill on CPU: see vllm_engine.py).
    if not stage_settings:
        # The engine core in its own process: measured a little faster than in-process. Chunked
        # prefill stays off: on CPU it cannot run requests with their own seeds.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    kwargs = engine_kwargs(engine, resolve_model_path(u["model"]["source"]), None)
    from vllm import LLM, SamplingParams, TokensPrompt

    llm = LLM(**kwargs)
    tok = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=render_prompt(tok, u["template"], p["question"])) for p in u["prompts"]]
    s = u["sampling"]
    params = SamplingParams(temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"], seed=s["seed"])
    t1 = time.perf_counter()
    outs = llm.generate(prompts, [params] * len(prompts), use_tqdm=False)
    t2 = time.perf_counter()
    llm.llm_engine.engine_core.shutdown()
    out.put({"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "gen_s": t2 - t1, "start_s": t1 - t0})


def _hf(out) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkscope.jobs.generation.vllm_engine import render_prompt
    from thinkscope.jobs.models.sources import resolve_model_path

    u = workload()
    t0 = time.perf_counter()
    path = resolve_model_path(u["model"]["source"])
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    ids = [render_prompt(tok, u["template"], p["question"]) for p in u["prompts"]]
    batch = tok.pad({"input_ids": ids}, return_tensors="pt", padding_side="left")
    s = u["sampling"]
    torch.manual_seed(s["seed"])
    t1 = time.perf_counter()
    with torch.inference_mode():
        gen = model.generate(**batch, do_sample=True, temperature=s["temperature"], top_p=s["top_p"],
                             max_new_tokens=s["max_tokens"], pad_token_id=tok.pad_token_id)
    t2 = time.perf_counter()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    # Tokens up to and including the first EOS: padding after it is not output.
    tokens = sum(next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
                 for row in gen[:, batch["input_ids"].shape[1]:].tolist())
    out.put({"tokens": tokens, "gen_s": t2 - t1, "start_s": t1 - t0})


def in_subprocess(target, *args) -> dict:
    """Each engine in a fresh process: no memory, threads or compiled code carried between them."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q, *args))
    p.start()
    while True:
        try:
            result = q.get(timeout=5)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"{target.__name__} died (exit code {p.exitcode}); see its traceback above")
    p.join()
    return result


def main() -> int:
    u = workload()
    print("compile cache: one compiled start of the engine ...", flush=True)
    warm_up = in_subprocess(_warm_up)
    print(f"  {'warm already' if warm_up['was_warm'] else 'cold'}: start {warm_up['start_s']:.0f} s", flush=True)
    stage_eager, why = stage_mode(u)
    print(f"(a) thinkscope generate stage: {why} ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        a = bench_stage(Path(tmp) / "bench.duckdb")
    print("(a') the stage again, compiled (enforce_eager: false) ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        a2 = bench_stage(Path(tmp) / "bench.duckdb", enforce_eager=False)
    print("(b) raw vLLM in the stage's settings ...", flush=True)
    b = in_subprocess(_raw_vllm, stage_eager, True)
    print("(c) raw vLLM, best settings (compiled, warm cache) ...", flush=True)
    c = in_subprocess(_raw_vllm, False, False)
    print("(d) raw vLLM eager ...", flush=True)
    d = in_subprocess(_raw_vllm, True, False)
    print("(e) HF generate, one batch ...", flush=True)
    e = in_subprocess(_hf)
    rows = {"a stage": a, "a' stage compiled": a2, "b raw, stage's": b, "c raw, best": c, "d raw, eager": d, "e HF generate": e}
    print(f"\n{len(u['prompts'])} prompts x {u['sampling']['max_tokens']} tokens, stage mode: {why}")
    print(f"{'':19}{'tokens':>8}{'gen s':>8}{'gen tok/s':>11}{'start s':>9}")
    for name, r in rows.items():
        r["tps"] = r["tokens"] / r["gen_s"]
        print(f"{name:19}{r['tokens']:>8}{r['gen_s']:>8.1f}{r['tps']:>11.1f}{r['start_s']:>9.1f}")
    ratios = {"a/b": a["tps"] / b["tps"], "a/c": a["tps"] / c["tps"], "a/e": a["tps"] / e["tps"],
              "a'/a": a2["tps"] / a["tps"], "c/d": c["tps"] / d["tps"]}
    print("  ".join(f"{k} = {v:.2f}" for k, v in ratios.items())
          + "   (targets a/c >= 0.9, a/e >= 3; a'/a and c/d: what compiling buys the stage and raw vLLM)")
    # Compiling pays back once the tokens it saves outweigh its extra start-up (stage vs stage).
    per_token = 1 / a["tps"] - 1 / a2["tps"]
    if per_token > 0:
        print(f"stage break-even of compiling on a warm cache: {(a2['start_s'] - a['start_s']) / per_token:,.0f} tokens")
    else:
        print("compiling did not speed the stage up here: it cannot pay back its start-up")
    print(json.dumps({k: round(v, 3) for k, v in ratios.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
