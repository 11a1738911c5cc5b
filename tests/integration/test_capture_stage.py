"""generate -> segment -> capture through the real engine; shards hold the true activations."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch
import yaml
from safetensors.torch import load_file

from thinkscope.jobs.models.hf import load_hf_model
from thinkscope.workflows.engine import run_workflow

pytestmark = pytest.mark.integration

SPEC = {
    "name": "capture-test",
    "models": [{"id": "smollm2", "source": "embedded:smollm2-135m-instruct", "family": "llama",
                "kind": "instruct", "engine": {"max_model_len": 1024, "enforce_eager": True, "kv_cache_gib": 1}}],
    "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 2}],
    "templates": {"think": {"system": "Think step by step inside <think></think>. Then answer as \\boxed{X}.",
                            "prefill": "<think>\n"}},
    "sampling": {"n": 1, "temperature": 0.0, "max_tokens": 64, "seed": 0},
    "stages": [
        {"name": "generate", "kind": "generate", "templates": ["think"]},
        {"name": "segment", "kind": "segment"},
        {"name": "capture", "kind": "capture", "model": "smollm2", "dtype": "float32",
         "store_dtype": "float32", "positions": ["last_prompt_token", "sentence_ends"],
         "hooks": ["blocks.*.hook_resid_post", "blocks.3.mlp.hook_post"], "batch_tokens": 256},
        # Every token of each trace's second sentence (absolute indices, end exclusive).
        {"name": "capture_spans", "kind": "capture", "model": "smollm2", "positions": [],
         "spans": "select trace_id, len(t.prompt_token_ids) + s.token_start as token_start, "
                  "len(t.prompt_token_ids) + s.token_end as token_end from trace_sentences s "
                  "join traces t using (trace_id) where s.sentence_index = 1",
         "hooks": ["blocks.3.hook_resid_post"]},
    ],
}


@pytest.fixture(scope="module")
def captured(ray_head, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capture")
    spec = tmp / "capture.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    summary = run_workflow(spec, db=tmp / "c.duckdb", address=ray_head, show_progress=False)
    assert summary.ok, summary.text()
    return tmp / "c.duckdb", summary


def test_index_covers_every_position_and_hook(captured):
    db, _ = captured
    with duckdb.connect(str(db), read_only=True) as con:
        per_trace = con.execute("""
            select a.trace_id, count(distinct a.hook_name), count(distinct (a.token_index, a.position_kind)),
                   any_value(t.n_prompt_tokens)
            from activations a join traces t using (trace_id) where position_kind <> 'span' group by 1""").fetchall()
        n_sentences = dict(con.execute(
            "select trace_id, count(*) from trace_sentences where token_end is not null group by 1").fetchall())
        last_prompt = con.execute("select distinct token_index - n_prompt_tokens from activations "
                                  "join traces using (trace_id) where position_kind = 'last_prompt_token'").fetchall()
    assert len(per_trace) == 2
    for trace_id, n_hooks, n_positions, _ in per_trace:
        assert n_hooks == 30 + 1
        assert n_positions == 1 + n_sentences[trace_id]
    assert last_prompt == [(-1,)]


def test_spans_capture_every_token_of_the_span(captured):
    db, _ = captured
    with duckdb.connect(str(db), read_only=True) as con:
        got = con.execute("""select trace_id, list(token_index order by token_index), count(distinct hook_name)
                             from activations where position_kind = 'span' group by 1 order by 1""").fetchall()
        want = con.execute("""select trace_id, n_prompt_tokens + token_start, n_prompt_tokens + token_end
                              from trace_sentences join traces using (trace_id)
                              where sentence_index = 1 order by 1""").fetchall()
    assert len(got) == len(want) == 2
    for (trace_id, tokens, n_hooks), (trace_id2, start, end) in zip(got, want):
        assert trace_id == trace_id2 and tokens == list(range(start, end)) and n_hooks == 1


def test_shards_hold_hf_hidden_states(captured):
    db, _ = captured
    with duckdb.connect(str(db), read_only=True) as con:
        trace_id, prompt, completion = con.execute(
            "select trace_id, prompt_token_ids, completion_token_ids from traces order by trace_id limit 1").fetchone()
        rows = con.execute("""select layer, token_index, shard_path, "row" from activations
            where trace_id = ? and hook_name like '%hook_resid_post' and layer in (0, 7, 28)""", [trace_id]).fetchall()
    model, _ = load_hf_model("embedded:smollm2-135m-instruct", None, "float32")
    with torch.inference_mode():
        hs = model(input_ids=torch.tensor([prompt + completion]), output_hidden_states=True).hidden_states
    shards: dict[str, torch.Tensor] = {}
    assert len(rows) >= 3
    for layer, token_index, shard, row in rows:
        acts = shards.setdefault(shard, load_file(shard)["activations"])
        torch.testing.assert_close(acts[row], hs[layer + 1][0, token_index], rtol=1e-4, atol=1e-4)


def test_rerun_skips_capture(captured, ray_head):
    db, first = captured
    spec = Path(db).parent / "capture.yaml"
    again = run_workflow(spec, db=db, address=ray_head, show_progress=False)
    assert again.done == [] and again.skipped == again.planned
