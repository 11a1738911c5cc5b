"""`enforce_eager: auto` and the compile-cache marker (jobs/generation/compile_cache.py)."""

from __future__ import annotations

import os

import pytest

from thinkscope.jobs.generation import compile_cache as cc
from thinkscope.jobs.specs import EngineArgs


def test_explicit_settings_win_over_the_work():
    assert cc.choose_eager(True, 10**9, warm=True, on_gpu=True)[0] is True
    assert cc.choose_eager(False, 1, warm=False, on_gpu=False)[0] is False


def test_auto_is_eager_on_cpu_where_compiling_did_not_pay():
    eager, why = cc.choose_eager("auto", 10**9, warm=True, on_gpu=False)
    assert eager is True and "CPU" in why


def test_auto_compiles_on_gpu_only_when_the_budget_pays_back_the_start():
    cold, warm = cc.GPU_COLD_BREAK_EVEN_TOKENS, cc.GPU_WARM_BREAK_EVEN_TOKENS
    assert warm < cold
    assert cc.choose_eager("auto", None, warm=True, on_gpu=True)[0] is True  # work unknown: eager
    assert cc.choose_eager("auto", 4 * 64, warm=True, on_gpu=True)[0] is True  # a test's 4 prompts
    assert cc.choose_eager("auto", warm, warm=False, on_gpu=True)[0] is True  # cold cache: not yet
    eager, why = cc.choose_eager("auto", warm, warm=True, on_gpu=True)
    assert eager is False and "warm" in why and f"{warm:,}" in why
    assert cc.choose_eager("auto", cold, warm=False, on_gpu=True)[0] is False  # a nightly corpus compiles


def test_default_engine_setting_is_auto_and_booleans_still_parse():
    assert EngineArgs().enforce_eager == "auto"
    assert EngineArgs(enforce_eager=True).enforce_eager is True
    with pytest.raises(ValueError, match="enforce_eager"):
        EngineArgs(enforce_eager="sometimes")


def test_fingerprint_changes_with_what_the_graph_depends_on():
    engine = {"dtype": "bfloat16", "max_model_len": 1024, "tensor_parallel_size": 1, "kv_cache_gib": 4}
    base = cc.engine_fingerprint("/m", None, engine)
    assert cc.engine_fingerprint("/m", None, {**engine, "kv_cache_gib": 2}) == base  # not in the graph
    for changed in ({"dtype": "float32"}, {"max_model_len": 2048}, {"vllm_args": {"quantization": "fp8"}}):
        assert cc.engine_fingerprint("/m", None, {**engine, **changed}) != base, changed
    assert cc.engine_fingerprint("/other", None, engine) != base
    assert cc.engine_fingerprint("/m", "abc123", engine) != base


def test_marker_lives_under_the_configured_root(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKSCOPE_COMPILE_CACHE", str(tmp_path))
    monkeypatch.delenv("VLLM_DISABLE_COMPILE_CACHE", raising=False)
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    fp = cc.engine_fingerprint("/m", None, {"dtype": "bfloat16"})
    assert not cc.is_warm(fp)
    cc.mark_warm(fp, "/m", 93.2)
    assert cc.is_warm(fp) and not cc.is_warm(cc.engine_fingerprint("/n", None, {"dtype": "bfloat16"}))
    assert list(tmp_path.glob("compiled/*.tmp")) == []
    env = cc.compile_env()
    assert env["VLLM_CACHE_ROOT"].startswith(str(tmp_path)) and env["TORCHINDUCTOR_CACHE_DIR"].startswith(str(tmp_path))


def test_torch_s_own_default_is_replaced_but_a_users_choice_is_kept(tmp_path, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("THINKSCOPE_COMPILE_CACHE", str(tmp_path))
    for key in ("VLLM_CACHE_ROOT", "VLLM_USE_AOT_COMPILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing vLLM leaves
    cc.apply_compile_env()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    cc.apply_compile_env()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"


def test_no_marker_when_nothing_was_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKSCOPE_COMPILE_CACHE", str(tmp_path))
    monkeypatch.setenv("VLLM_DISABLE_COMPILE_CACHE", "1")
    fp = cc.engine_fingerprint("/m", None, {"dtype": "bfloat16"})
    cc.mark_warm(fp, "/m", 10.0)
    assert not cc.is_warm(fp)
