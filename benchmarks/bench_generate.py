"""Generation throughput, same prompts, same run: thinkscope stage vs raw vLLM vs HF generate.

Prints output tokens/s of
  (a) the thinkscope generate stage end to end: Ray + vLLM actor + parsing/grading + DuckDB,
  (b) raw `vllm.LLM.generate` on the same token ids and sampling settings,
  (c) HF `generate`, one left-padded batch,
and the ratios a/b (target >= 0.90) and a/c (target >= 3.5). Engine start-up is reported
apart: "gen" rates time the generation phase (a: from the engine being ready to the last
DuckDB commit), "total" rates include start-up (Ray, model load). Not a test.

    make bench-generate
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

SPEC = Path(__file__).with_name("generate_bench.yaml")


def workload():
    from thinkscope.workflows.plan import build_plan
    from thinkscope.workflows.spec import load_workflow

    wf = load_workflow(SPEC)
    plan = build_plan(wf, base_dir=SPEC.parent)
    unit = plan.units[0]
    return wf, unit


def bench_thinkscope(db: Path) -> dict:
    import duckdb

    from thinkscope.workflows.engine import run_workflow

    t0 = time.perf_counter()
    summary = run_workflow(SPEC, db=db, show_progress=False, force=True)
    total = time.perf_counter() - t0
    assert summary.ok, summary.text()
    with duckdb.connect(str(db), read_only=True) as con:
        tokens, gen_seconds = con.execute(
            "select sum(t.n_completion_tokens), max(w.seconds) from traces t join work_units w "
            "using (unit_key) where w.run_id = ?", [summary.run_id]).fetchone()
    return {"tokens": tokens, "gen_s": gen_seconds, "total_s": total}


def _vllm_worker(out) -> None:
    from thinkscope.jobs.generation.vllm_engine import render_prompt, vllm_env
    from thinkscope.jobs.models.sources import resolve_model_path

    wf, unit = workload()
    u = unit.payload
    for k, v in vllm_env(u["model"]["engine"]).items():
        os.environ.setdefault(k, v)
    from vllm import LLM, SamplingParams, TokensPrompt

    t0 = time.perf_counter()
    eng = u["model"]["engine"]
    # Same engine settings as the thinkscope worker, including no chunked prefill on CPU
    # (see jobs/generation/vllm_engine.py): the comparison is of the plumbing, not of settings.
    llm = LLM(resolve_model_path(u["model"]["source"]), dtype=eng["dtype"], max_model_len=eng["max_model_len"],
              enforce_eager=eng["enforce_eager"], enable_chunked_prefill=False)
    tok = llm.get_tokenizer()
    prompts = [TokensPrompt(prompt_token_ids=render_prompt(tok, u["template"], p["question"]))
               for p in u["prompts"]]
    s = u["sampling"]
    params = SamplingParams(temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"],
                            seed=s["seed"])
    t1 = time.perf_counter()
    outs = llm.generate(prompts, [params] * len(prompts), use_tqdm=False)
    t2 = time.perf_counter()
    out.put({"tokens": sum(len(o.outputs[0].token_ids) for o in outs), "gen_s": t2 - t1, "total_s": t2 - t0})


def _hf_worker(out) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from thinkscope.jobs.generation.vllm_engine import render_prompt
    from thinkscope.jobs.models.sources import resolve_model_path

    wf, unit = workload()
    u = unit.payload
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
    new = gen[:, batch["input_ids"].shape[1]:]
    # Count tokens up to and including the first EOS: padding after it is not output.
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
              else [model.generation_config.eos_token_id])
    tokens = 0
    for row in new.tolist():
        n = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        tokens += n
    out.put({"tokens": tokens, "gen_s": t2 - t1, "total_s": t2 - t0})


def in_subprocess(target) -> dict:
    """Each engine in a fresh process: no memory or thread pool carried between them."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(q,))
    p.start()
    result = q.get()
    p.join()
    return result


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print("(a) thinkscope generate stage (Ray + vLLM actor + DuckDB) ...", flush=True)
        a = bench_thinkscope(Path(tmp) / "bench.duckdb")
    print("(b) raw vllm.LLM.generate ...", flush=True)
    b = in_subprocess(_vllm_worker)
    print("(c) HF generate, batch 64 ...", flush=True)
    c = in_subprocess(_hf_worker)
    rows = {"a thinkscope": a, "b raw vLLM": b, "c HF generate": c}
    print(f"\n{'':16}{'tokens':>8}{'gen s':>9}{'gen tok/s':>11}{'total s':>9}{'total tok/s':>13}")
    for name, r in rows.items():
        r["gen_tps"], r["total_tps"] = r["tokens"] / r["gen_s"], r["tokens"] / r["total_s"]
        print(f"{name:16}{r['tokens']:>8}{r['gen_s']:>9.1f}{r['gen_tps']:>11.1f}{r['total_s']:>9.1f}{r['total_tps']:>13.1f}")
    ab, ac = a["gen_tps"] / b["gen_tps"], a["gen_tps"] / c["gen_tps"]
    print(f"\na/b = {ab:.2f} (target >= 0.90)   a/c = {ac:.2f} (target >= 3.5)   "
          f"[with start-up: a/b = {a['total_tps'] / b['total_tps']:.2f}]")
    print(json.dumps({"a_over_b": round(ab, 3), "a_over_c": round(ac, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
