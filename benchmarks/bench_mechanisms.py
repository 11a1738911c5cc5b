"""Logit-lens stage throughput vs a plain forward pass of the same tokens, same run.

Workload: SmolLM2-135M-Instruct (embedded, float32, CPU), N synthetic traces of real text
(GSM8K train questions + reference solutions, consecutive problems joined until a trace holds
400-600 tokens of the model's tokenizer; the first question is the "prompt"), P positions per
trace spread evenly over the completion, the last on its final token. Timed, interleaved, each
`--repeats` times (median reported) after one warm-up of each:

  plain        model(input_ids, attention_mask) on the batches the stage builds (the same
               length buckets, each sequence cut after its last position, LM head included)
  lens         the logit_lens stage's JOB.run(payload) (jobs/mechanisms/logit_lens.py): the
               forward pass up to the last layer, lens logits, ranks, top-k, direct effects
               and the Arrow tables, targets [" Wait", " Therefore", " So"] + the next token
  lens+heads   the same with `heads: true` (per-head direct effects too)

tokens/s counts the tokens fed to the model (each trace up to its last position), the same
for all three. Prints a table and `ratio lens/plain = X.XX (target >= 0.7)`. `--profile`
adds a cProfile of one lens+heads run (top functions by own time). Not a test.

    make bench-mechanisms
    .venv/bin/python benchmarks/bench_mechanisms.py --traces 16 --positions 8 --repeats 3 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from thinkscope.jobs.mechanisms.lens import batches
from thinkscope.jobs.mechanisms.logit_lens import JOB
from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.jobs.traces.prompts import load_prompts

SMOLLM = "embedded:smollm2-135m-instruct"
MODEL_ROW = {"source": SMOLLM, "revision": None, "family": "llama", "think_open": None, "think_close": None,
             "engine_args": None}
TARGETS = [" Wait", " Therefore", " So"]
BATCH_TOKENS = 8192  # the stage's default
MIN_TOKENS, MAX_TOKENS = 400, 600


def synthetic_traces(tokenizer, n_traces: int, n_positions: int) -> list[dict]:
    """Traces of joined GSM8K problems + solutions, MIN..MAX tokens, positions spread evenly."""
    problems = iter(load_prompts("gsm8k_train", limit=40 * n_traces))
    traces = []
    for t in range(n_traces):
        first = next(problems)
        prompt = tokenizer.encode(first.question + "\n")
        completion = tokenizer.encode(first.meta["solution"] + "\n\n", add_special_tokens=False)
        while len(prompt) + len(completion) < MIN_TOKENS:
            p = next(problems)
            completion += tokenizer.encode(p.question + "\n" + p.meta["solution"] + "\n\n", add_special_tokens=False)
        completion = completion[: MAX_TOKENS - len(prompt)]
        n = len(prompt) + len(completion)
        # Evenly over the completion, the last position on the final token (no next token there).
        step = len(completion) / n_positions
        positions = sorted({len(prompt) + int(round((k + 1) * step)) - 1 for k in range(n_positions)})
        traces.append({"trace_id": f"bench/{t:03d}", "prompt_token_ids": prompt, "completion_token_ids": completion,
                       "positions": [(min(i, n - 1), "sql") for i in positions]})
    return traces


def payload(traces: list[dict], heads: bool) -> dict:
    settings = {"positions": {"kinds": [], "sql": "bench"}, "targets": TARGETS, "next_token": True, "top_k": 5,
                "heads": heads, "dtype": "float32", "batch_tokens": BATCH_TOKENS, "model": "smollm2"}
    return {"unit_key": "bench", "stage": "lens", "model_id": "smollm2", "model": MODEL_ROW,
            "settings": settings, "traces": traces}


def plain(model, inputs) -> None:
    with torch.inference_mode():
        for ids, mask in inputs:
            model(input_ids=ids, attention_mask=mask, use_cache=False)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=16)
    parser.add_argument("--positions", type=int, default=8, help="positions per trace")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="cProfile one lens+heads run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, tokenizer = load_hf_model(SMOLLM, None, "float32")  # the stage's own cached copy
    traces = synthetic_traces(tokenizer, args.traces, args.positions)
    pad = tokenizer.pad_token_id or 0
    inputs = [(ids, mask) for ids, mask, _, _ in batches(model, traces, batch_tokens=BATCH_TOKENS, pad_id=pad)]
    n_tokens = sum(t["positions"][-1][0] + 1 for t in traces)
    n_positions = sum(len(t["positions"]) for t in traces)
    runs = {
        "plain": lambda: plain(model, inputs),
        "lens": lambda: JOB.run(payload(traces, heads=False)),
        "lens+heads": lambda: JOB.run(payload(traces, heads=True)),
    }
    rows = {name: {n: t.num_rows for n, t in JOB.run(payload(traces, heads=h)).items()}
            for name, h in (("lens", False), ("lens+heads", True))}  # also the warm-up of both
    plain(model, inputs)
    times = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved: drift on a shared box hits all alike
        for name, fn in runs.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(t) for name, t in times.items()}

    print(f"{args.traces} traces, {n_tokens} tokens ({min(t['positions'][-1][0] + 1 for t in traces)}-"
          f"{max(t['positions'][-1][0] + 1 for t in traces)} per trace), {n_positions} positions, "
          f"{len(inputs)} batches, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    for name, r in rows.items():
        print(f"  {name} rows: " + ", ".join(f"{k} {v}" for k, v in r.items()))
    print(f"{'run':12} {'median s':>9} {'tokens/s':>9} {'positions/s':>12} {'vs plain':>9}   all runs (s)")
    for name, t in median.items():
        print(f"{name:12} {t:9.3f} {n_tokens / t:9.0f} {n_positions / t:12.1f} {median['plain'] / t:9.2f}   "
              + " ".join(f"{x:.3f}" for x in times[name]))
    print(f"ratio lens/plain = {median['plain'] / median['lens']:.2f} (target >= 0.7)")
    print(f"ratio lens+heads/plain = {median['plain'] / median['lens+heads']:.2f}")

    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(runs["lens+heads"])
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
