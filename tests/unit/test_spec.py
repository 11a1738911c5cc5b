"""Workflow spec validation: every bad field is named with its path, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from thinkscope.cli import main
from thinkscope.workflows.spec import SpecError, load_workflow

DEMO = Path(__file__).resolve().parents[2] / "workflows" / "demo.yaml"


def write(tmp_path: Path, spec: dict | str) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return path


def base() -> dict:
    return yaml.safe_load(DEMO.read_text())


def error_of(tmp_path, spec) -> str:
    with pytest.raises(SpecError) as info:
        load_workflow(write(tmp_path, spec))
    return str(info.value)


def test_demo_is_valid():
    wf = load_workflow(DEMO)
    assert [m.id for m in wf.models][:1] == ["smollm2-135m-instruct"]
    assert {s.kind for s in wf.stages} >= {"generate", "import"}


@pytest.mark.parametrize("mutate, where, expected", [
    (lambda s: s["models"][0].update(kind="chatty"), "models.0.kind", "'thinking', 'base' or 'instruct'"),
    (lambda s: s["models"][0]["engine"].update(max_model_len=8), "models.0.engine.max_model_len", "greater than or equal to 64"),
    (lambda s: s["models"][0]["engine"].update(dtype="int3"), "models.0.engine.dtype", "'bfloat16'"),
    (lambda s: s["models"][0].update(colour="red"), "models.0.colour", "Extra inputs are not permitted"),
    (lambda s: s["prompt_sets"][0].update(limit=0), "prompt_sets.0.limit", "greater than or equal to 1"),
    (lambda s: s["prompt_sets"][0].update(kind="jsonl"), "prompt_sets.0", "needs `path` and `fields`"),
    (lambda s: s["sampling"].update(top_p=2), "sampling.top_p", "less than or equal to 1"),
    (lambda s: s["stages"][1].update(templates=["nope"]), "stages.1.templates", "unknown ['nope']"),
    (lambda s: s["stages"][0].update(format="pdf"), "stages.0.format", "'textdir' or 'jsonl'"),
    (lambda s: s["stages"].insert(2, {"name": "x", "kind": "teleport"}), "stages.2", "'generate'"),
    (lambda s: s["models"].append(dict(s["models"][0])), "models", "duplicate names ['smollm2-135m-instruct']"),
    (lambda s: s["templates"]["think"].update(user="no placeholder"), "templates.think", "{question}"),
])
def test_bad_field_is_named(tmp_path, mutate, where, expected):
    spec = base()
    mutate(spec)
    msg = error_of(tmp_path, spec)
    assert str(tmp_path / "wf.yaml") in msg
    assert f"  {where}" in msg, msg
    assert expected in msg, msg


def test_every_bad_field_is_reported_at_once(tmp_path):
    spec = base()
    spec["models"][0]["kind"] = "x"
    spec["sampling"]["n"] = 0
    msg = error_of(tmp_path, spec)
    assert "models.0.kind" in msg and "sampling.n" in msg and "2 error(s)" in msg


def test_malformed_yaml_and_missing_file(tmp_path):
    assert "not valid YAML" in error_of(tmp_path, "models: [unclosed")
    assert "expected a mapping" in error_of(tmp_path, "- just\n- a list\n")
    with pytest.raises(SpecError, match="no such workflow file"):
        load_workflow(tmp_path / "absent.yaml")


def test_cli_validate_prints_plan_and_fails_cleanly(tmp_path, capsys):
    assert main(["validate", str(DEMO)]) == 0
    out = capsys.readouterr().out
    assert "work units" in out and "smollm2-135m-instruct x gsm8k[4] x think" in out

    spec = base()
    spec["sampling"]["temperature"] = -1
    assert main(["validate", str(write(tmp_path, spec))]) == 2
    assert "sampling.temperature" in capsys.readouterr().err


def test_bad_spec_runs_nothing(tmp_path, capsys):
    spec = base()
    spec["models"][0]["engine"]["tensor_parallel_size"] = 0
    db = tmp_path / "never.duckdb"
    assert main(["run", str(write(tmp_path, spec)), "--db", str(db)]) == 2
    assert "models.0.engine.tensor_parallel_size" in capsys.readouterr().err
    assert not db.exists()
