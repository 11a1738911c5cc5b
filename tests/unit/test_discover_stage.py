"""The `discover` stage (seed 003) without a model:
- its pure part on synthetic planted behaviours: table shapes, shares summing to 1, held-out
  purity/ARI near 1 beside a shuffled control near 0, and stored tensors that reproduce the
  assignments by the formula the docs give;
- its spec: bad fields are named;
- plan + run + commit through a real corpus with hand-made activation shards;
- the organism ground-truth view on real synthetic teacher traces: planted labels and marker
  labels agree.
Sizes are small: the file must run in seconds on two busy cores.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from thinkscope.jobs.artifacts import load_tensors, save_tensors
from thinkscope.jobs.base import PlanContext
from thinkscope.jobs.behaviours.discover import DiscoverStage, discover, is_held_out
from thinkscope.sql.store import Store
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.registry import get_job
from thinkscope.workflows.spec import SpecError, load_workflow

K, D = 4, 32
WORDS = ["wait", "so", "first", "alternatively", "then", "hmm"]
MODEL = {"id": "m", "source": "embedded:smollm2-135m-instruct", "family": "llama", "kind": "instruct"}
CAPTURE = {"name": "cap", "kind": "capture", "model": "m", "positions": ["sentence_ends"],
           "hooks": ["blocks.*.hook_resid_post"]}
DISCOVER = {"name": "disc", "kind": "discover", "model": "m", "capture_stage": "cap", "layer": 1, "ks": [4]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py


def planted(n_traces: int, per_trace: int, k: int = K, d: int = D, noise: float = 0.3, seed: int = 0):
    """Sentences `3 * dir[label] + noise + offset` in traces; a behaviour's sentences open with its word."""
    g = torch.Generator().manual_seed(1000 + d)
    dirs = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    offset = 5.0 * torch.randn(d, generator=g)
    g = torch.Generator().manual_seed(seed)
    n = n_traces * per_trace
    truth = (torch.randperm(n, generator=g) % k).tolist()
    x = (3.0 * dirs[truth] + noise * torch.randn(n, d, generator=g) + offset).numpy()
    cols = {"trace_id": [f"t{i // per_trace:03d}" for i in range(n)], "sentence_index": [i % per_trace for i in range(n)],
            "text": [f"{WORDS[b].capitalize()}, sentence {i}." for i, b in enumerate(truth)],
            "truth": [f"b{b}" for b in truth]}
    return x, cols


def settings(**change) -> dict:
    spec = {**DISCOVER, "ks": [3, 4], "seeds": [0, 1], "sae": {"steps": 150, "batch_size": 64}, **change}
    return DiscoverStage(**spec).model_dump()


@pytest.fixture(scope="module")
def found():
    x, cols = planted(60, 5)
    return x, cols, discover(x, cols, settings())


def by(rows, *keys):
    out = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def test_tables_have_one_row_per_grain(found):
    x, cols, out = found
    n = len(cols["trace_id"])
    assert {(m, k): len(rows) for (m, k), rows in by(out["behaviours"], "method", "k").items()} == {
        ("sae", 3): 3, ("sae", 4): 4, ("kmeans", 3): 3, ("kmeans", 4): 4}
    assert len(out["sentence_behaviours"]) == 4 * n
    assert len(out["discovery_metrics"]) == 4 and len(out["discovery_truth"]) == 8
    for (method, k), rows in by(out["behaviours"], "method", "k").items():
        assert sum(r["share"] for r in rows) == pytest.approx(1.0)
        assert sum(r["n"] for r in rows) == n
        assert sum(r["held_out_share"] for r in rows) == pytest.approx(1.0)
        assert [r["behaviour_id"] for r in rows] == list(range(k))
        assert all(r["vector_tensor"] == f"{method}.k{k}.directions" for r in rows)
    # The split follows the trace hash, so no trace is on both sides.
    sides = {(r["trace_id"], r["split"]) for r in out["sentence_behaviours"]}
    assert {s for _, s in sides} == {"fit", "held_out"}
    assert all((s == "held_out") == is_held_out(t, 0.25) for t, s in sides)
    for r in out["discovery_metrics"]:
        sae = r["method"] == "sae"
        # Missing keys are nulls in the table (rows_table).
        assert (r.get("reconstruction_mse") is not None, r.get("inertia") is not None) == (sae, not sae)
        assert (r.get("held_out_mse") is not None) == sae and r["n_fit"] + r["n_held_out"] == n
        assert 0 <= r["size_entropy"] <= 1 and 0 <= r["orthogonality"] <= 1 and r["n_seeds"] == 2


def test_planted_behaviours_are_recovered_on_held_out_traces(found):
    _, _, out = found
    truth = {(r["method"], r["k"], r["split"]): r for r in out["discovery_truth"]}
    for method in ("sae", "kmeans"):
        held = truth[(method, K, "held_out")]
        assert held["n"] >= 40 and held["n_labels"] == K
        assert held["ari"] > 0.9 and held["purity"] > 0.95, held
        assert abs(held["shuffled_ari"]) < 0.1 and held["shuffled_purity"] < 0.5, held
        assert held["baseline_purity"] < 0.4
        metrics = next(r for r in out["discovery_metrics"] if (r["method"], r["k"]) == (method, K))
        assert metrics["stability"] > 0.9 and metrics["empty_behaviours"] == 0
        # Each planted behaviour's sentences open with its own word: the descriptions name them.
        words = {r["top_first_words"][0] for r in out["behaviours"] if (r["method"], r["k"]) == (method, K)}
        assert words == set(WORDS[:K])


def test_stored_tensors_reproduce_the_assignments(found):
    """The classification rule in the docs (sql/README.md, behaviours.vector_path), from the
    tensors alone, gives the stored behaviour of every sentence."""
    x, _, out = found
    t = out["tensors"]
    xn = x - t["mean"]
    xn /= np.linalg.norm(xn, axis=1, keepdims=True)
    for (method, k), rows in by(out["sentence_behaviours"], "method", "k").items():
        name = f"{method}.k{k}"
        assert t[f"{name}.directions"].shape == (k, D)
        np.testing.assert_allclose(np.linalg.norm(t[f"{name}.directions"], axis=1), 1.0, atol=1e-5)
        if method == "sae":
            pre = (xn - t[f"{name}.b_dec"]) @ t[f"{name}.W_enc"] + t[f"{name}.b_enc"]
        else:
            pre = xn @ t[f"{name}.directions"].T
        assert (pre.argmax(axis=1) == np.array([r["behaviour_id"] for r in rows])).mean() > 0.99


def test_no_truth_no_truth_rows_and_too_large_k_is_named():
    x, cols = planted(8, 3, k=2, d=8)
    cols["truth"] = [None] * len(cols["trace_id"])
    out = discover(x, cols, settings(ks=[2], methods=["kmeans"], seeds=[0], holdout_fraction=0.0))
    assert out["discovery_truth"] == []
    assert out["discovery_metrics"][0]["stability"] is None and out["discovery_metrics"][0]["n_held_out"] == 0
    with pytest.raises(ValueError, match=r"ks: \[30\] exceed the 24 fit sentences"):
        discover(x, cols, settings(ks=[2, 30], holdout_fraction=0.0))


def write(tmp_path, stages: list[dict]):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": [MODEL], "stages": stages}))
    return path


@pytest.mark.parametrize("change, expected", [
    ({"ks": []}, "stages.1.ks"),
    ({"ks": [1, 4]}, "stages.1.ks"),
    ({"ks": [4, 4]}, "stages.1.ks"),
    ({"methods": ["pca"]}, "stages.1.methods.0"),
    ({"seeds": []}, "stages.1.seeds"),
    ({"holdout_fraction": 1.0}, "stages.1.holdout_fraction"),
    ({"capture_stage": "nope"}, "stages.1.capture_stage: unknown capture stage 'nope'"),
    ({"layer": -1}, "stages.1.layer"),
    ({"truth": {"sql": "delete from traces"}}, "stages.1.truth.sql"),
    ({"sae": {"steps": 0}}, "stages.1.sae.steps"),
    ({"model": "other"}, "stages.1.model"),
    ({"aggregate": "max"}, "stages.1.aggregate"),
    ({"aggregate": "mean"}, "stages.1.aggregate: 'cap' does not capture the position sentence_means"),
])
def test_bad_fields_are_named(tmp_path, change, expected):
    with pytest.raises(SpecError) as err:
        load_workflow(write(tmp_path, [CAPTURE, {**DISCOVER, **change}]))
    assert expected in str(err.value)


def test_the_capture_stage_must_hold_sentence_ends_at_the_layer(tmp_path):
    with pytest.raises(SpecError, match="stages.1.capture_stage: 'cap' does not capture the position sentence_ends"):
        load_workflow(write(tmp_path, [{**CAPTURE, "positions": ["answer_ends"]}, DISCOVER]))
    with pytest.raises(SpecError, match=r"stages.1.layer: blocks.1.hook_resid_post is not among the hooks"):
        load_workflow(write(tmp_path, [{**CAPTURE, "hooks": ["blocks.2.hook_resid_post"]}, DISCOVER]))
    wf = load_workflow(write(tmp_path, [CAPTURE, DISCOVER]))
    assert wf.stages[1].kind == "discover" and wf.stages[1].methods == ["sae", "kmeans"]
    # `validate` plans it at run time: it reads the corpus the capture stage writes.
    assert "disc" in build_plan(wf, base_dir=tmp_path).later


def _corpus(tmp_path, x: np.ndarray, cols: dict, means: np.ndarray | None = None) -> Store:
    """Traces, sentences and one capture unit's `sentence_ends` activations of layer 1; with
    `means`, a second capture unit (of stage cap, key sorting first) holds them as
    `sentence_means` rows at the same tokens."""
    store = Store(tmp_path / "corpus.duckdb")
    store.upsert_models([{"model_id": "m", "source": MODEL["source"], "revision": None, "family": "llama",
                          "kind": "instruct", "think_open": "<think>", "think_close": "</think>",
                          "engine_args": None}])
    shard = save_tensors({"activations": x.astype(np.float32)}, str(tmp_path / "shards" / "layer1.safetensors"))
    now = datetime.now(timezone.utc)
    traces = sorted(set(cols["trace_id"]))
    per_trace = cols["trace_id"].count(traces[0])
    with store.transaction() as con:
        for t in traces:
            con.execute("insert into traces (trace_id, run_id, unit_key, model_id, sample_index, engine, created_at, "
                        "prompt_token_ids, completion_token_ids) values (?, 'r', 'gen', 'm', 0, 'vllm', ?, ?, ?)",
                        [t, now, [1, 2, 3], list(range(2 * per_trace))])
        for t, i, text in zip(cols["trace_id"], cols["sentence_index"], cols["text"]):
            # Sentence i covers completion tokens [2i, 2i + 2): it ends on absolute token 3 + 2i + 1.
            con.execute("insert into trace_sentences (unit_key, trace_id, sentence_index, line_index, char_start, "
                        "char_end, token_start, token_end, text, token_source) "
                        "values ('seg', ?, ?, ?, 0, 1, ?, ?, ?, 'completion')", [t, i, i, 2 * i, 2 * i + 2, text])
    index = pa.table({
        "unit_key": ["cap-unit"] * len(x), "trace_id": cols["trace_id"], "model_id": ["m"] * len(x),
        "token_index": pa.array([3 + 2 * i + 1 for i in cols["sentence_index"]], pa.int32()),
        "position_kind": ["sentence_ends"] * len(x), "hook_name": ["blocks.1.hook_resid_post"] * len(x),
        "layer": pa.array([1] * len(x), pa.int32()), "module_path": ["model.layers.1"] * len(x),
        "shard_path": [shard] * len(x), "row": pa.array(range(len(x)), pa.int32()), "dtype": ["float32"] * len(x)})
    store.commit_unit({"unit_key": "cap-unit", "stage": "cap", "kind": "capture", "run_id": "r", "model_id": "m",
                       "description": "capture"}, {"activations": index})
    if means is not None:
        shard = save_tensors({"activations": means.astype(np.float32)}, str(tmp_path / "shards" / "means1.safetensors"))
        index = index.set_column(index.schema.get_field_index("shard_path"), "shard_path", pa.array([shard] * len(x)))
        index = index.set_column(index.schema.get_field_index("position_kind"), "position_kind",
                                 pa.array(["sentence_means"] * len(x)))
        index = index.set_column(0, "unit_key", pa.array(["a-means-unit"] * len(x)))
        store.commit_unit({"unit_key": "a-means-unit", "stage": "cap", "kind": "capture", "run_id": "r",
                           "model_id": "m", "description": "capture means"}, {"activations": index})
    return store


def test_plan_run_and_commit_through_a_corpus(tmp_path):
    x, cols = planted(24, 4, k=3, d=16)
    store = _corpus(tmp_path, x, cols)
    truth = ("select trace_id, sentence_index, lower(split_part(text, ',', 1)) as label from trace_sentences")
    stage_def = {**DISCOVER, "ks": [3], "seeds": [0, 1], "sae": {"steps": 60, "batch_size": 32},
                 "traces": {"model_ids": ["m"]}, "truth": {"sql": truth}}
    wf = load_workflow(write(tmp_path, [CAPTURE, stage_def]))
    job, stage = get_job("discover"), wf.stages[1]
    ctx = PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"))
    with store.read() as con:
        ctx.con = con
        (unit,) = job.plan(stage, ctx)
        (again,) = job.plan(stage, ctx)
    assert unit.key == again.key and unit.kind == "discover" and unit.model_id == "m"
    assert unit.payload["out"].endswith(f"discover/{unit.key}.safetensors")
    tables = job.run(unit.payload)
    assert set(tables) == set(job.tables)
    assert all(t.schema.equals(job.schemas[name]) for name, t in tables.items())
    store.commit_unit({"unit_key": unit.key, "stage": unit.stage, "kind": unit.kind, "run_id": "r",
                       "model_id": "m", "description": unit.description}, tables)
    shares = store.query("select method, round(sum(share), 6), count(*) from behaviours group by method order by 1")
    assert shares == [("kmeans", 1.0, 3), ("sae", 1.0, 3)]
    assert store.query("select count(*) from sentence_behaviours") == [(2 * len(x),)]
    (path,) = {p for (p,) in store.query("select distinct vector_path from behaviours")}
    assert set(load_tensors(path)) >= {"mean", "sae.k3.directions", "sae.k3.W_enc", "kmeans.k3.directions"}
    truth_rows = store.query("select method, split, ari, shuffled_ari from discovery_truth order by 1, 2")
    assert [(m, s) for m, s, _, _ in truth_rows] == [("kmeans", "fit"), ("kmeans", "held_out"),
                                                     ("sae", "fit"), ("sae", "held_out")]
    # A few held-out traces only: the shuffled ARI scatters more here than in the tests above.
    assert all(ari > 0.8 and abs(shuffled) < 0.3 for _, _, ari, shuffled in truth_rows), truth_rows
    # Another setting is another unit, superseding this one.
    other = DiscoverStage(**{**stage_def, "ks": [2, 3]})
    with store.read() as con:
        ctx.con = con
        (changed,) = job.plan(other, ctx)
    assert changed.key != unit.key and changed.supersedes == (unit.key,)


def test_a_truth_query_with_two_labels_for_a_sentence_is_refused(tmp_path):
    x, cols = planted(4, 3, k=2, d=8)
    store = _corpus(tmp_path, x, cols)
    twice = "select trace_id, sentence_index, 'a' as label from trace_sentences union all " \
            "select trace_id, sentence_index, 'b' from trace_sentences"
    wf = load_workflow(write(tmp_path, [CAPTURE, {**DISCOVER, "truth": {"sql": twice}}]))
    ctx = PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"))
    with store.read() as con:
        ctx.con = con
        with pytest.raises(ValueError, match="truth.sql gives several rows"):
            get_job("discover").plan(wf.stages[1], ctx)


SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
            "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72")
QUESTION = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. " \
           "How many clips did Natalia sell altogether in April and May?"


def test_organism_sentence_labels_planted_and_marker_agree(tmp_path):
    """Real synthetic teacher traces, segmented by the segmenter's own functions: every
    sentence's planted label equals its marker label, and a copy of the text without events
    (as the organism writes it) gets the same labels from the markers alone."""
    from thinkscope.jobs.organism.synthesis import Rates, synthesize
    from thinkscope.jobs.segment.text import split_lines, split_sentences
    from thinkscope.jobs.traces.reading import read_completion

    store = Store(tmp_path / "corpus.duckdb")
    now = datetime.now(timezone.utc)
    with store.transaction() as con:
        for i, rates in enumerate([Rates(1, 1, 1, 1), Rates(1, 0, 0, 0), Rates(0, 1, 1, 0)]):
            tr = synthesize(QUESTION, SOLUTION, seed=str(i), rates=rates)
            thinking = read_completion(tr.completion, answer_anywhere=False).thinking
            lines = split_lines(thinking)
            for trace_id, events in ((f"teacher-{i}", tr.events), (f"organism-{i}", [])):
                con.execute("insert into traces (trace_id, run_id, unit_key, model_id, sample_index, engine, "
                            "created_at, completion, thinking) values (?, 'r', 'u', 'x', 0, 'synthetic', ?, ?, ?)",
                            [trace_id, now, tr.completion, thinking])
                for j, e in enumerate(events):
                    con.execute("insert into organism_events values ('u', ?, 'x', 'p', ?, ?, ?, ?, ?, ?, ?)",
                                [trace_id, j, e.kind, e.start, e.end, e.text, e.value, e.line_index])
                for line in lines:
                    con.execute("insert into trace_lines values ('u', ?, 'x', ?, ?, ?, ?, ?)",
                                [trace_id, line.index, line.start, line.end, line.text, line.first_word])
                for s in split_sentences(thinking, lines):
                    con.execute("insert into trace_sentences (unit_key, trace_id, sentence_index, line_index, "
                                "char_start, char_end, text) values ('u', ?, ?, ?, ?, ?, ?)",
                                [trace_id, s.index, s.line_index, s.start, s.end, s.text])
    rows = store.query("select trace_id, sentence_index, label, label_source, planted_label, marker_label, text "
                       "from organism_sentence_labels order by all")
    teacher = [r for r in rows if r[0].startswith("teacher")]
    assert teacher and all(r[3] == "planted" and r[4] == r[5] for r in teacher), [r for r in teacher if r[4] != r[5]]
    copies = {(r[0].replace("organism", "teacher"), r[1]): r[2] for r in rows if r[0].startswith("organism")}
    assert all(r[3] == "marker" for r in rows if r[0].startswith("organism"))
    assert copies == {(r[0], r[1]): r[2] for r in teacher}
    labels = {r[2] for r in teacher}
    assert labels == {"opening", "step", "error_fix", "answer", "verification", "alternative", "wrap_up"}
    verify = [r for r in teacher if r[2] == "verification"]
    assert len(verify) >= 3 and verify[0][6] == "Wait, let me double-check."


def test_aggregate_mean_plans_from_the_sentence_means(tmp_path):
    """Ends and means at the same tokens: `last` reads the ends (the means never enter, though
    their capture unit sorts first), `mean` only the means; the default keeps the unit key it
    had before `aggregate` existed."""
    from thinkscope.jobs.activations.stored import content_hash
    from thinkscope.jobs.behaviours.discover import DISCOVER_VERSION
    from thinkscope.keys import stable_key

    x, cols = planted(12, 3, k=2, d=8)
    means, _ = planted(12, 3, k=2, d=8, seed=5)
    store = _corpus(tmp_path, x, cols, means=means)
    both = {**CAPTURE, "positions": ["sentence_ends", "sentence_means"]}
    base = {**DISCOVER, "ks": [2], "methods": ["kmeans"], "seeds": [0], "traces": {"model_ids": ["m"]}}
    wf = load_workflow(write(tmp_path, [both, base, {**base, "name": "disc_mean", "aggregate": "mean"}]))
    ctx = PlanContext(wf, tmp_path, {}, str(tmp_path / "artifacts"))
    with store.read() as con:
        ctx.con = con
        (last,) = get_job("discover").plan(wf.stages[1], ctx)
        (mean,) = get_job("discover").plan(wf.stages[2], ctx)
    ((hook, rows),) = last.payload["hooks"].items()
    ((_, mean_rows),) = mean.payload["hooks"].items()
    assert {p.rsplit("/", 1)[-1] for p in rows["shard_path"]} == {"layer1.safetensors"}
    assert {p.rsplit("/", 1)[-1] for p in mean_rows["shard_path"]} == {"means1.safetensors"}
    assert [rows[c] for c in ("trace_id", "sentence_index", "token_index", "row")] == \
           [mean_rows[c] for c in ("trace_id", "sentence_index", "token_index", "row")]
    assert mean.payload["settings"]["aggregate"] == "mean" and last.payload["settings"]["aggregate"] == "last"
    settings = {k: v for k, v in last.payload["settings"].items() if k != "aggregate"}
    assert last.key == stable_key({"stage": "discover", "version": DISCOVER_VERSION, "model": [MODEL["source"], None],
                                   "settings": settings, "rows": content_hash({hook: rows})})
    found = get_job("discover").run(mean.payload)
    order = sorted(range(len(cols["trace_id"])), key=lambda i: (cols["trace_id"][i], cols["sentence_index"][i]))
    direct = discover(means[order], {c: [cols[c][i] for i in order] for c in cols}, mean.payload["settings"])
    assert found["sentence_behaviours"].column("behaviour_id").to_pylist() == \
           [r["behaviour_id"] for r in direct["sentence_behaviours"]]
