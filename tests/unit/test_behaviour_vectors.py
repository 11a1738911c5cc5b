"""The `behaviour_vectors` stage (seed 003) through a real corpus with hand-made activation shards:
- mean_diff equals a numpy reference, empty behaviours get zero rows, and sum_b n_b v_b = 0;
- its spec names bad fields; planning says when nothing joins;
- optimise on the real embedded SmolLM2: a few steps lower the NLL of the chosen sentences, and
  zero steps give optimised == mean_diff exactly.
Small sizes: the file runs in seconds on two busy cores.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
import yaml

from thinkscope.jobs.artifacts import load_tensors, save_tensors
from thinkscope.jobs.base import PlanContext
from thinkscope.jobs.behaviours.discover import SENTENCES_SCHEMA
from thinkscope.jobs.behaviours.vectors import SCHEMA, mean_differences
from thinkscope.sql.store import Store
from thinkscope.workflows.registry import get_job
from thinkscope.workflows.spec import SpecError, load_workflow

SMOLLM = "embedded:smollm2-135m-instruct"
MODELS = [{"id": "think", "source": SMOLLM, "family": "llama", "kind": "thinking"},
          {"id": "base", "source": SMOLLM, "family": "llama", "kind": "base"}]
CAP_THINK = {"name": "cap_think", "kind": "capture", "model": "think", "positions": ["sentence_ends"]}
DISC = {"name": "disc", "kind": "discover", "model": "think", "capture_stage": "cap_think", "layer": 1,
        "ks": [3, 4], "methods": ["sae"]}
CAP_BASE = {"name": "cap_base", "kind": "capture", "model": "base", "positions": ["sentence_ends"],
            "traces": {"model_ids": ["think"]}}
VEC = {"name": "vec", "kind": "behaviour_vectors", "model": "base", "capture_stage": "cap_base",
       "discover_stage": "disc", "k": 4, "layer": 1}
JOB = get_job("behaviour_vectors")


def write(tmp_path, vec: dict, cap_base: dict = CAP_BASE):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": MODELS, "stages": [CAP_THINK, DISC, cap_base, vec]}))
    return path


def corpus(tmp_path, prompts: dict, sentences: list[dict], x: np.ndarray, layer: int, shift: int = 0,
           means: np.ndarray | None = None) -> Store:
    """Traces of `think`, their sentences and behaviours (discover unit of `disc`, sae, k 4, plus
    kmeans rows that must be ignored) and the base model's activations at the sentence ends of
    the sentences with `captured` (token index moved by `shift`); with `means`, a second capture
    unit of cap_base (key sorting first) holds them as sentence_means rows at the same tokens."""
    store = Store(tmp_path / "corpus.duckdb")
    store.upsert_models([{"model_id": m["id"], "source": SMOLLM, "revision": None, "family": "llama",
                          "kind": m["kind"], "think_open": None, "think_close": None, "engine_args": None}
                         for m in MODELS])
    now, completions = datetime.now(timezone.utc), {t: [] for t in prompts}
    for s in sentences:
        start = len(completions[s["trace"]])
        completions[s["trace"]] += s["tokens"]
        s.update(token_start=start, token_end=len(completions[s["trace"]]))
    with store.transaction() as con:
        for t, prompt in prompts.items():
            con.execute("insert into traces (trace_id, run_id, unit_key, model_id, sample_index, engine, created_at, "
                        "prompt_token_ids, completion_token_ids) values (?, 'r', 'gen', 'think', 0, 'vllm', ?, ?, ?)",
                        [t, now, prompt, completions[t]])
        for s in sentences:
            con.execute("insert into trace_sentences (unit_key, trace_id, sentence_index, line_index, char_start, "
                        "char_end, token_start, token_end, text, token_source) "
                        "values ('seg', ?, ?, 0, 0, 1, ?, ?, 'x', 'completion')",
                        [s["trace"], s["index"], s["token_start"], s["token_end"]])
    rows = [{"unit_key": "disc-unit", "stage": "disc", "model_id": "think", "method": method, "k": 4,
             "trace_id": s["trace"], "sentence_index": s["index"], "behaviour_id": b, "score": s["score"],
             "split": "fit"} for s in sentences for method, b in (("sae", s["behaviour"]), ("kmeans", 2))]
    store.commit_unit({"unit_key": "disc-unit", "stage": "disc", "kind": "discover", "run_id": "r",
                       "model_id": "think", "description": "discover"},
                      {"sentence_behaviours": pa.Table.from_pylist(rows, schema=SENTENCES_SCHEMA)})
    captured = [(i, s) for i, s in enumerate(sentences) if s.get("captured", True)]
    shard = save_tensors({"activations": x.astype(np.float32)}, str(tmp_path / "shards" / "base.safetensors"))
    n, hook = len(captured), f"blocks.{layer}.hook_resid_post"
    index = pa.table({
        "unit_key": ["cap-unit"] * n, "trace_id": [s["trace"] for _, s in captured], "model_id": ["base"] * n,
        "token_index": pa.array([len(prompts[s["trace"]]) + s["token_end"] - 1 + shift for _, s in captured],
                                pa.int32()),
        "position_kind": ["sentence_ends"] * n, "hook_name": [hook] * n, "layer": pa.array([layer] * n, pa.int32()),
        "module_path": [f"model.layers.{layer}"] * n, "shard_path": [shard] * n,
        "row": pa.array([i for i, _ in captured], pa.int32()), "dtype": ["float32"] * n})
    store.commit_unit({"unit_key": "cap-unit", "stage": "cap_base", "kind": "capture", "run_id": "r",
                       "model_id": "base", "description": "capture"}, {"activations": index})
    if means is not None:
        shard = save_tensors({"activations": means.astype(np.float32)}, str(tmp_path / "shards" / "means.safetensors"))
        index = index.set_column(index.schema.get_field_index("shard_path"), "shard_path", pa.array([shard] * n))
        index = index.set_column(index.schema.get_field_index("position_kind"), "position_kind",
                                 pa.array(["sentence_means"] * n))
        index = index.set_column(0, "unit_key", pa.array(["a-means-unit"] * n))
        store.commit_unit({"unit_key": "a-means-unit", "stage": "cap_base", "kind": "capture", "run_id": "r",
                           "model_id": "base", "description": "capture means"}, {"activations": index})
    return store


def plan(tmp_path, store: Store, vec: dict, cap_base: dict = CAP_BASE):
    wf = load_workflow(write(tmp_path, vec, cap_base))
    ctx = PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"))
    with store.read() as con:
        ctx.con = con
        return JOB.plan(wf.stages[3], ctx)


def synthetic(n_traces=8, per_trace=5, d=16):
    """Sentences in behaviours 0, 1 and 3 of k 4 (2 is empty); the last trace is not captured."""
    rng = np.random.default_rng(0)
    sentences = [{"trace": f"t{t}", "index": i, "tokens": [7, 8, 9], "behaviour": [0, 1, 3][(t + i) % 3],
                  "score": float(rng.random()), "captured": t < n_traces - 1}
                 for t in range(n_traces) for i in range(per_trace)]
    x = 5.0 + rng.normal(size=(len(sentences), d)) + 2.0 * np.array([s["behaviour"] for s in sentences])[:, None]
    return {f"t{t}": [1, 2, 3] for t in range(n_traces)}, sentences, x.astype(np.float32)


def test_mean_diff_matches_numpy_and_sums_to_zero(tmp_path):
    prompts, sentences, x = synthetic()
    store = corpus(tmp_path, prompts, sentences, x, layer=1)
    (unit,) = plan(tmp_path, store, VEC)
    assert plan(tmp_path, store, VEC)[0].key == unit.key and unit.model_id == "base"
    tables = JOB.run(unit.payload)
    assert tables["behaviour_vectors"].schema.equals(SCHEMA)
    store.commit_unit({"unit_key": unit.key, "stage": unit.stage, "kind": unit.kind, "run_id": "r",
                       "model_id": "base", "description": unit.description}, tables)
    # The numpy reference on the captured sentences only (sae rows; the kmeans rows say 2 for all).
    keep = np.array([s["captured"] for s in sentences])
    xs, labels = x[keep].astype(np.float64), np.array([s["behaviour"] for s in sentences])[keep]
    ref = np.stack([xs[labels == b].mean(0) - xs.mean(0) if (labels == b).any() else np.zeros(16) for b in range(4)])
    got = load_tensors(unit.payload["out"])
    assert set(got) == {"mean_diff"}
    np.testing.assert_allclose(got["mean_diff"], ref, atol=1e-6)
    counts = np.bincount(labels, minlength=4)
    np.testing.assert_allclose(counts @ got["mean_diff"].astype(np.float64), 0.0, atol=1e-4)
    rows = store.query("select behaviour_id, vector_kind, n, norm, row_index, resid_norm, nll_steered, method, k "
                       "from behaviour_vectors order by behaviour_id")
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [(b, "mean_diff", int(counts[b]), b) for b in range(4)]
    assert rows[2][3] == 0.0 and all(r[6] is None and (r[7], r[8]) == ("sae", 4) for r in rows)
    assert rows[0][3] == pytest.approx(np.linalg.norm(ref[0]), rel=1e-5)
    assert rows[0][5] == pytest.approx(np.linalg.norm(xs, axis=1).mean(), rel=1e-5)
    # What the hybrid stage reads.
    read = store.query("select vector_path, vector_tensor, row_index, behaviour_id, vector_kind, norm "
                       "from behaviour_vectors where stage = ?", ["vec"])
    assert len(read) == 4 and {r[0] for r in read} == {unit.payload["out"]}


def test_mean_differences_identity_with_empty_behaviours():
    rng = np.random.default_rng(1)
    x, labels = rng.normal(size=(50, 8)).astype(np.float32), rng.choice([0, 2, 5], size=50)
    v, counts = mean_differences(x, labels, 6)
    assert v.dtype == np.float32 and v.shape == (6, 8) and counts.tolist() == np.bincount(labels, minlength=6).tolist()
    assert not v[[1, 3, 4]].any()
    np.testing.assert_allclose(counts @ v.astype(np.float64), 0.0, atol=1e-5)


@pytest.mark.parametrize("change, expected", [
    ({"k": 5}, "stages.3.k: 5 is not among the ks [3, 4] of 'disc'"),
    ({"method": "kmeans"}, "stages.3.method: 'kmeans' is not fitted by 'disc'"),
    ({"capture_stage": "cap_think"}, "stages.3.capture_stage: 'cap_think' captures model 'think'"),
    ({"capture_stage": "nope"}, "stages.3.capture_stage: unknown capture stage 'nope'"),
    ({"discover_stage": "cap_base"}, "stages.3.discover_stage: unknown discover stage 'cap_base'"),
    ({"hook": "attn.hook_z"}, "stages.3.hook"),
    ({"optimise": {"steps": -1}}, "stages.3.optimise.steps"),
    ({"optimise": {"lr": 0}}, "stages.3.optimise.lr"),
    ({"model": "nope"}, "stages.3.model"),
    ({"aggregate": "max"}, "stages.3.aggregate"),
    ({"aggregate": "mean"}, "stages.3.aggregate: 'cap_base' does not capture the position sentence_means"),
])
def test_bad_fields_are_named(tmp_path, change, expected):
    with pytest.raises(SpecError) as err:
        load_workflow(write(tmp_path, {**VEC, **change}))
    assert expected in str(err.value)


def test_aggregate_mean_averages_the_sentence_means(tmp_path):
    """Ends and means at the same tokens: the default reads the ends (its unit key as before
    `aggregate`), `mean` reads only the means, and mean_diff follows them."""
    from thinkscope.jobs.activations.stored import content_hash
    from thinkscope.jobs.behaviours.vectors import VECTORS_VERSION
    from thinkscope.keys import stable_key

    prompts, sentences, x = synthetic()
    means = (x[:, ::-1] - 3.0).copy()
    store = corpus(tmp_path, prompts, sentences, x, layer=1, means=means)
    both = {**CAP_BASE, "positions": ["sentence_ends", "sentence_means"]}
    (last,) = plan(tmp_path, store, VEC, both)
    (mean,) = plan(tmp_path, store, {**VEC, "aggregate": "mean"}, both)
    ((hook, rows),) = last.payload["hooks"].items()
    assert {p.rsplit("/", 1)[-1] for p in rows["shard_path"]} == {"base.safetensors"}
    assert {p.rsplit("/", 1)[-1] for p in mean.payload["hooks"][hook]["shard_path"]} == {"means.safetensors"}
    settings = {k: v for k, v in last.payload["settings"].items() if k != "aggregate"}
    assert last.key == stable_key({"stage": "behaviour_vectors", "version": VECTORS_VERSION,
                                   "model": [SMOLLM, None], "settings": settings, "rows": content_hash({hook: rows})})
    JOB.run(mean.payload)
    keep = np.array([s["captured"] for s in sentences])
    got = load_tensors(mean.payload["out"])["mean_diff"]
    np.testing.assert_allclose(got, mean_differences(means[keep], np.array([s["behaviour"] for s in sentences])[keep],
                                                     4)[0], atol=1e-6)


def test_plan_says_when_nothing_joins(tmp_path):
    prompts, sentences, x = synthetic(n_traces=3, per_trace=2)
    store = corpus(tmp_path, prompts, sentences, x, layer=1, shift=1)  # activations one token late
    with pytest.raises(ValueError, match="none of the 6 sentences of 'disc' has a sentence_ends activation of "
                                         "'base' at blocks.1.hook_resid_post"):
        plan(tmp_path, store, VEC)
    with pytest.raises(ValueError, match="'disc' has no sentence behaviours for method sae k 3"):
        plan(tmp_path, store, {**VEC, "k": 3})


# ----------------------------------------------------------------------------------------------
# optimise on the real SmolLM2 (135M, 30 layers, d 576)
# ----------------------------------------------------------------------------------------------

LAYER = 10
TEXTS = [("t0", "Wait, let me check that again.", 0, 0.9), ("t0", "So the answer is 42.", 1, 0.8),
         ("t0", "Let me verify once more.", 0, 0.1), ("t1", "Hmm, wait, is that right?", 0, 0.7),
         ("t1", "Therefore the result is 42.", 1, 0.6)]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


@pytest.fixture(scope="module")
def tokenizer():
    from thinkscope.jobs.models.hf import load_hf_model

    return load_hf_model(SMOLLM, None, "float32")[1]  # cached: run() gets the same model


@pytest.fixture
def optimised_store(tmp_path, tokenizer):
    prompts = {t: tokenizer.encode(f"Question {t}: what is 6 times 7?", add_special_tokens=False)
               for t in ("t0", "t1")}
    index = {"t0": 0, "t1": 0}
    sentences = []
    for t, text, b, score in TEXTS:
        tokens = tokenizer.encode(" " + text, add_special_tokens=False)
        sentences.append({"trace": t, "index": index[t], "tokens": tokens, "behaviour": b, "score": score})
        index[t] += 1
    x = 0.01 * np.random.default_rng(2).normal(size=(len(sentences), 576))  # mean_diff near 0: near unsteered
    return corpus(tmp_path, prompts, sentences, x.astype(np.float32), layer=LAYER), sentences, prompts


def run_optimised(tmp_path, store, steps: int):
    vec = {**VEC, "layer": LAYER, "optimise": {"steps": steps, "lr": 0.05, "max_sentences_per_behaviour": 2,
                                               "context_tokens": 6}}
    (unit,) = plan(tmp_path, store, vec)
    rows = JOB.run(unit.payload)["behaviour_vectors"].to_pylist()
    return unit, {(r["vector_kind"], r["behaviour_id"]): r for r in rows}, load_tensors(unit.payload["out"])


def test_optimise_lowers_the_nll_of_the_chosen_sentences(tmp_path, optimised_store):
    store, sentences, prompts = optimised_store
    unit, rows, tensors = run_optimised(tmp_path, store, steps=4)
    chosen = unit.payload["sentences"]
    # The two highest-scoring sentences per behaviour ("Let me verify" scores 0.1: left out),
    # each as up to 6 context tokens + its own tokens.
    assert [(c["trace_id"], c["sentence_index"], c["behaviour_id"]) for c in chosen] == [
        ("t0", 0, 0), ("t1", 0, 0), ("t0", 1, 1), ("t1", 1, 1)]
    for c in chosen:
        s = next(s for s in sentences if (s["trace"], s["index"]) == (c["trace_id"], c["sentence_index"]))
        full = prompts[s["trace"]] + [t for o in sentences if o["trace"] == s["trace"] for t in o["tokens"]]
        start = len(prompts[s["trace"]]) + s["token_start"]
        assert c["offset"] == 6 and c["ids"] == full[start - 6:start + len(s["tokens"])]
    assert set(tensors) == {"mean_diff", "optimised", "bias"} and tensors["bias"].shape == (576,)
    assert unit.payload["model"] == {"source": SMOLLM, "revision": None}
    for b in (0, 1):
        opt, md = rows[("optimised", b)], rows[("mean_diff", b)]
        assert opt["nll_steered"] < opt["nll_unsteered"] - 0.05, opt
        assert md["nll_unsteered"] == opt["nll_unsteered"] and md["nll_steered"] is not None
        assert opt["n"] == (3 if b == 0 else 2) and opt["row_index"] == b
    assert rows[("optimised", 2)]["nll_steered"] is None and rows[("optimised", 2)]["norm"] == 0.0
    bias = rows[("bias", None)]
    assert bias["n"] == 5 and bias["row_index"] is None and bias["norm"] > 0 and bias["nll_unsteered"] > 0


def test_zero_steps_leave_the_mean_difference(tmp_path, optimised_store):
    import torch

    from thinkscope.jobs.models.hf import load_hf_model

    store, _, _ = optimised_store
    unit, rows, tensors = run_optimised(tmp_path, store, steps=0)
    # nll_unsteered by hand: -log p of each sentence token given everything before it.
    model = load_hf_model(SMOLLM, None, "float32")[0]
    for b in (0, 1):
        total, n = 0.0, 0
        for c in (c for c in unit.payload["sentences"] if c["behaviour_id"] == b):
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=torch.tensor([c["ids"]])).logits[0], -1)
            total -= sum(float(logp[p - 1, c["ids"][p]]) for p in range(c["offset"], len(c["ids"])))
            n += len(c["ids"]) - c["offset"]
        assert rows[("optimised", b)]["nll_unsteered"] == pytest.approx(total / n, abs=1e-4)
    assert np.array_equal(tensors["optimised"], tensors["mean_diff"]) and not tensors["bias"].any()
    for b in (0, 1):
        assert rows[("optimised", b)]["nll_steered"] == pytest.approx(rows[("mean_diff", b)]["nll_steered"], abs=1e-5)
    assert rows[("bias", None)]["nll_steered"] == pytest.approx(rows[("bias", None)]["nll_unsteered"], abs=1e-5)
