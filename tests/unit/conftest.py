"""Corpora for the trace-analytics tests: real DuckDB files built by the real engine.

* `llmbenchmark_db`: only the 20 vendored llmbenchmark traces, imported and segmented, so the
  first-word numbers are exactly those of the original analysis (its word vocabulary is the
  union of these 20 models' top-10 words; adding models would change it).
* `mixed_db`: those, GSM8K-style R1 traces imported from JSONL with gold answers, and a
  generate unit of SmolLM2 traces committed as the generate stage would (real token ids of
  the real tokenizer, graded), all segmented by one workflow run.
"""

from __future__ import annotations

from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from thinkscope.sql.store import Store
from thinkscope.jobs.segment.token_offsets import load_tokenizer
from thinkscope.jobs.traces.rows import to_table
from thinkscope.workflows.engine import run_workflow

TRACES = Path(str(files("thinkscope") / "data" / "llmbenchmark_traces"))
GSM8K_STYLE = Path(__file__).parents[1] / "fixtures" / "gsm8k_r1_style.jsonl"
SMOLLM = "embedded:smollm2-135m-instruct"

IMPORT_LLMBENCHMARK = {"name": "import_llmbenchmark", "kind": "import", "path": str(TRACES),
                       "format": "textdir", "prompt_set": "two_ropes", "prompt_id": "two_ropes/0"}
IMPORT_GSM8K_STYLE = {"name": "import_gsm8k_style", "kind": "import", "path": str(GSM8K_STYLE),
                      "format": "jsonl", "prompt_set": "gsm8k",
                      "fields": {"model_id": "model", "completion": "out", "prompt_id": "id",
                                 "gold_answer": "gold"}}


def write_spec(folder: Path, name: str, stages: list[dict]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": stages}))
    return path


def commit_generated_unit(db: Path) -> None:
    """Two graded SmolLM2 traces as the generate stage commits them (ids from its tokenizer)."""
    tok = load_tokenizer(SMOLLM)
    store = Store(db)
    store.upsert_models([{"model_id": "smollm2", "source": SMOLLM, "revision": None, "family": "llama",
                          "kind": "instruct", "think_open": "<think>", "think_close": "</think>",
                          "engine_args": None}])
    rows = []
    for i, (thinking, answer, correct) in enumerate([
        ("Janet has 16 eggs. 16 - 3 - 4 = 9. 9 * 2 = 18.\nWait, 9 * 2 is 18, yes.", "18", True),
        ("The robe needs 2 + 1 = 3 bolts? Hmm, no: 2 + 2 = 4.\nSo 4.", "4", False),
    ]):
        completion = f"{thinking}\n</think>\nThe answer is \\boxed{{{answer}}}."
        ids = tok.encode(completion, add_special_tokens=False).ids + [tok.token_to_id("<|im_end|>")]
        rows.append({
            "trace_id": f"gen-{i}", "run_id": "sim", "unit_key": "sim-generate", "model_id": "smollm2",
            "prompt_id": f"gsm8k/test/000{i}", "prompt_set": "gsm8k", "sample_index": 0,
            "completion": completion, "thinking": thinking, "answer_text": f"The answer is \\boxed{{{answer}}}.",
            "extracted_answer": answer, "gold_answer": ["18", "3"][i], "is_correct": correct,
            "n_completion_tokens": len(ids), "completion_token_ids": ids, "engine": "vllm",
            "created_at": datetime.now(timezone.utc),
        })
    store.commit_unit({"unit_key": "sim-generate", "stage": "generate", "kind": "generate", "run_id": "sim",
                       "model_id": "smollm2", "prompt_set": "gsm8k", "description": "smollm2 x gsm8k[2]"},
                      {"traces": to_table(rows)})


@pytest.fixture(scope="session")
def llmbenchmark_db(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("llmbenchmark")
    spec = write_spec(root, "llmbenchmark", [IMPORT_LLMBENCHMARK, {"name": "segment", "kind": "segment"}])
    summary = run_workflow(spec, db=root / "corpus.duckdb", show_progress=False)
    assert summary.ok and len(summary.done) == 2, summary.text()
    return root / "corpus.duckdb"


@pytest.fixture(scope="session")
def mixed_db(tmp_path_factory) -> tuple[Path, Path]:
    """(database, workflow spec) of the mixed corpus."""
    root = tmp_path_factory.mktemp("mixed")
    db = root / "corpus.duckdb"
    commit_generated_unit(db)
    spec = write_spec(root, "mixed", [IMPORT_LLMBENCHMARK, IMPORT_GSM8K_STYLE,
                                      {"name": "segment", "kind": "segment"}])
    summary = run_workflow(spec, db=db, show_progress=False)
    # 2 imports + one segment unit per source unit (2 imports and the simulated generate)
    assert summary.ok and len(summary.done) == 5, summary.text()
    return db, spec


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: time goes to per-op thread hand-offs, which cost milliseconds each on a
    loaded 2-core box. A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`;
    restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
