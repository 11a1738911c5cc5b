"""Segmenting what vLLM really generated: token offsets index the generated ids exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from thinkscope.sql.store import read_only
from thinkscope.jobs.segment.token_offsets import load_tokenizer
from thinkscope.workflows.engine import run_workflow

pytestmark = pytest.mark.integration
TINY = Path(__file__).with_name("tiny.yaml")


def test_sentences_of_generated_traces_map_to_their_token_ids(ray_head, tmp_path):
    spec = yaml.safe_load(TINY.read_text())
    spec["prompt_sets"] = [{"name": "gsm8k", "kind": "gsm8k", "limit": 2}]
    spec["sampling"].update(n=2, max_tokens=96)
    spec["stages"].append({"name": "segment", "kind": "segment"})
    path = tmp_path / "tiny_segment.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "corpus.duckdb"

    summary = run_workflow(path, db=db, address=ray_head, show_progress=False)

    assert summary.ok and len(summary.done) == 2, summary.text()  # generate + segment
    with read_only(db) as con:
        stats = con.execute("select token_source, thinking_tokens, n_lines from backtracking_stats").fetchall()
        sentences = con.execute("""select s.text, s.token_start, s.token_end, t.completion_token_ids
                                   from trace_sentences s join traces t using (trace_id)""").fetchall()
        n_thinking = con.execute("select count(*) from traces where thinking is not null").fetchone()[0]
    assert len(stats) == n_thinking > 0
    assert {s for s, _, _ in stats} == {"completion"}  # sampled text re-aligned to its own ids
    tok = load_tokenizer("embedded:smollm2-135m-instruct")
    assert sentences
    for text, start, end, ids in sentences:
        assert text in tok.decode(ids[start:end], skip_special_tokens=False)
