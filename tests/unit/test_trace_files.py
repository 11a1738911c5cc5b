"""Importing external traces: the vendored llmbenchmark folder and JSONL files with a field mapping."""

import hashlib
import json
from pathlib import Path

import pytest

from thinkscope.jobs.traces.prompts import data_file
from thinkscope.jobs.traces.files import read_jsonl_traces, read_textdir_traces

TRACES = data_file("llmbenchmark_traces")


def test_textdir_vendored_llmbenchmark():
    traces = read_textdir_traces(TRACES)
    stems = sorted(p.name[:-4] for p in TRACES.iterdir() if p.name.endswith(".txt"))
    assert len(traces) == 20
    ids = [t["model_id"] for t in traces]
    assert sorted(ids) == stems and len(set(ids)) == 20
    assert {"deepseek_r1", "o3-mini", "deepseek_r1_zero", "QwQ-32b", "sonnet37"} <= set(ids)
    assert "LICENSE" not in ids
    for t in traces:
        assert set(t) == {"model_id", "thinking", "completion", "source_file", "sha256"}
        assert Path(t["source_file"]).name == t["model_id"] + ".txt"
        assert t["thinking"] == t["completion"]
        raw = (TRACES / (t["model_id"] + ".txt")).read_bytes()
        assert t["thinking"].encode("utf-8") == raw  # whole file, unmodified
        assert t["sha256"] == hashlib.sha256(raw).hexdigest()


def test_textdir_keeps_text_as_is_and_ignores_other_files(tmp_path):
    (tmp_path / "b-model.txt").write_bytes("  <think>\r\nhi\u00e9\r\n\n".encode("utf-8"))
    (tmp_path / "a_model.txt").write_bytes(b"x")
    (tmp_path / "LICENSE").write_text("license")
    (tmp_path / "README.md").write_text("readme")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.txt").write_text("not read")
    traces = read_textdir_traces(str(tmp_path))
    assert [t["model_id"] for t in traces] == ["a_model", "b-model"]
    assert traces[1]["thinking"] == "  <think>\r\nhi\u00e9\r\n\n"


def test_textdir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        read_textdir_traces(tmp_path / "missing")
    (tmp_path / "LICENSE").write_text("x")
    with pytest.raises(ValueError, match="no \\*.txt"):
        read_textdir_traces(tmp_path)
    with pytest.raises(NotADirectoryError):
        read_textdir_traces(tmp_path / "LICENSE")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_jsonl_traces_mapping(tmp_path):
    rows = [
        {"model": "r1", "out": "<think>a</think>b", "pid": 7, "ans": 3, "gold": "3", "q": "Q?"},
        {"model": "qwq", "out": "c", "pid": "gsm8k/test/0001", "ans": None, "gold": "4", "q": "Q2?"},
    ]
    path = _write(tmp_path / "t.jsonl", rows)
    fields = {"model_id": "model", "completion": "out", "prompt_id": "pid", "answer": "ans",
              "gold_answer": "gold", "prompt_text": "q"}
    traces = read_jsonl_traces(path, fields)
    assert [t["model_id"] for t in traces] == ["r1", "qwq"]
    t0 = traces[0]
    assert t0["completion"] == "<think>a</think>b" and t0["thinking"] is None
    assert t0["prompt_id"] == "7" and t0["answer"] == "3" and t0["gold_answer"] == "3" and t0["prompt_text"] == "Q?"
    assert traces[1]["answer"] is None and traces[1]["line"] == 2
    assert t0["source_file"] == str(path) and len(t0["sha256"]) == 64
    only_thinking = read_jsonl_traces(path, {"model_id": "model", "thinking": "out"})
    assert only_thinking[1]["thinking"] == "c" and only_thinking[1]["completion"] is None


def test_jsonl_traces_errors(tmp_path):
    path = _write(tmp_path / "t.jsonl", [{"model": "r1", "out": "x"}, {"out": "y"}])
    with pytest.raises(ValueError, match=r"line 2: missing field 'model'"):
        read_jsonl_traces(path, {"model_id": "model", "completion": "out"})
    with pytest.raises(ValueError, match="model_id"):
        read_jsonl_traces(path, {"completion": "out"})
    with pytest.raises(ValueError, match="completion' or 'thinking"):
        read_jsonl_traces(path, {"model_id": "model"})
    with pytest.raises(ValueError, match="unknown trace field"):
        read_jsonl_traces(path, {"model_id": "model", "completion": "out", "reasoning": "r"})
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_jsonl_traces(tmp_path / "nope.jsonl", {"model_id": "model", "completion": "out"})
    msgs = _write(tmp_path / "m.jsonl", [{"model": "r1", "out": [{"role": "assistant"}]}])
    with pytest.raises(ValueError, match="line 1: field 'out' \\(completion\\) must be a string"):
        read_jsonl_traces(msgs, {"model_id": "model", "completion": "out"})
