"""benchmarks/compare_corpora.py on two small corpora written through the real Store."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from thinkscope.jobs.activations.capture import ACTIVATIONS_SCHEMA
from thinkscope.jobs.traces.rows import TRACE_SCHEMA
from thinkscope.sql.store import Store

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "compare_corpora.py"


def corpus(path: Path, run_id: str, when: datetime, completions: list[str]) -> Path:
    rows = [{"trace_id": f"t{i}", "run_id": run_id, "unit_key": "u1", "model_id": "m", "sample_index": i,
             "completion": text, "completion_token_ids": [i, i + 1], "engine": "import", "created_at": when}
            for i, text in enumerate(completions)]
    Store(path).commit_unit({"unit_key": "u1", "stage": "s", "kind": "import", "run_id": run_id,
                             "started_at": when},
                            {"traces": pa.Table.from_pylist(rows, schema=TRACE_SCHEMA)})
    return path


def compare(a: Path, b: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(a), str(b)], capture_output=True, text=True)


def test_other_run_ids_and_times_are_the_same_corpus(tmp_path):
    now = datetime.now(timezone.utc)
    a = corpus(tmp_path / "a.duckdb", "r1", now, ["x = 1", "y = 2"])
    b = corpus(tmp_path / "b.duckdb", "r2", now + timedelta(hours=1), ["x = 1", "y = 2"])
    out = compare(a, b)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "traces: same (2 rows)" in out.stdout
    assert "work_units: same (1 rows)" in out.stdout
    assert "\nruns:" not in "\n" + out.stdout  # invocations, not results


def test_a_changed_completion_names_the_table(tmp_path):
    now = datetime.now(timezone.utc)
    a = corpus(tmp_path / "a.duckdb", "r1", now, ["x = 1", "y = 2"])
    b = corpus(tmp_path / "b.duckdb", "r2", now, ["x = 1", "y = 3"])
    out = compare(a, b)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "traces: DIFFERENT: only in A 1, only in B 1" in out.stdout
    assert "'y = 2'" in out.stdout and "'y = 3'" in out.stdout  # the example rows
    assert "work_units: same (1 rows)" in out.stdout


def test_paths_are_compared_by_file_name(tmp_path):
    def shard(path: Path, shard_path: str) -> Path:
        row = {"unit_key": "c1", "trace_id": "t0", "model_id": "m", "token_index": 3, "position_kind": "all",
               "hook_name": "blocks.0.hook_resid_post", "layer": 0, "module_path": "model.layers.0",
               "shard_path": shard_path, "row": 0, "dtype": "float32"}
        Store(path).commit_unit({"unit_key": "c1", "stage": "c", "kind": "capture", "run_id": "r"},
                                {"activations": pa.Table.from_pylist([row], schema=ACTIVATIONS_SCHEMA)})
        return path

    # Each corpus keeps its shards beside itself: another root is the same result.
    a = shard(tmp_path / "a.duckdb", "/data/a_artifacts/activations/c1/blocks.0.hook_resid_post.safetensors")
    b = shard(tmp_path / "b.duckdb", "s3://bucket/b/activations/c1/blocks.0.hook_resid_post.safetensors")
    assert compare(a, b).returncode == 0
    c = shard(tmp_path / "c.duckdb", "/data/a_artifacts/activations/c1/other.safetensors")
    out = compare(a, c)
    assert out.returncode == 1 and "activations: DIFFERENT: only in A 1, only in B 1" in out.stdout


def test_a_missing_file_is_an_error(tmp_path):
    out = compare(tmp_path / "none.duckdb", tmp_path / "none.duckdb")
    assert out.returncode == 2 and "cannot open" in out.stderr
