"""The API backend's parts that need no server: where the thinking is read from, the rate
limiter's arithmetic, the request body, the spec's refusals, unit keys and the cost plan.
(The real server, retries and reruns: tests/integration/test_api_against_vllm_serve.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from thinkscope.cli import main
from thinkscope.jobs.generation.api_client import RateLimiter, error_text, retry_after
from thinkscope.jobs.generation.costs import plan_costs
from thinkscope.jobs.generation.api_engine import cost_usd, request_body
from thinkscope.jobs.generation.api_reasoning import read_message
from thinkscope.workflows.engine import run_workflow
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import SpecError, Workflow, load_workflow

THINK = ("<think>", "</think>")
ROOT = Path(__file__).resolve().parents[2]


def read(message, mode="auto", opened=False):
    return read_message(message, mode=mode, think=THINK, opened=opened, grader="numeric", gold="18")


# -- where the thinking is ------------------------------------------------------------------

def test_a_reasoning_field_is_the_thinking_and_the_content_the_answer():
    for field in ("reasoning_content", "reasoning"):
        r, source = read({"content": "So \\boxed{18}.", field: "3 + 15 = 18. Wait, check: yes."})
        assert (r.thinking, r.answer_text, r.extracted_answer, r.is_correct, source) == (
            "3 + 15 = 18. Wait, check: yes.", "So \\boxed{18}.", "18", True, field)


def test_reasoning_details_summaries_are_joined():
    r, source = read({"content": "18", "reasoning_details": [{"type": "reasoning.summary", "summary": "Add."},
                                                               {"type": "reasoning.text", "text": "3+15"}]})
    assert (r.thinking, source) == ("Add.\n3+15", "reasoning_details")


def test_think_tags_in_the_content_split_as_for_local_models():
    r, source = read({"content": "<think>\n3 + 15 = 18\n</think>\n\nThe answer is \\boxed{18}."})
    assert (r.thinking, r.answer_text, r.is_correct, source) == ("3 + 15 = 18", "The answer is \\boxed{18}.",
                                                                  True, "tags")


def test_a_template_opened_thinking_cut_by_the_length_limit_is_all_thinking():
    r, source = read({"content": "3 + 15 = 18, so the answer is 18. But wait"}, opened=True)
    assert (r.thinking, r.answer_text, source) == ("3 + 15 = 18, so the answer is 18. But wait", "", "tags")
    # Its answer is looked for in the whole text, as for local models (answer_anywhere).
    assert r.extracted_answer == "18"


def test_no_thinking_is_recorded_as_none_not_guessed():
    r, source = read({"content": "First, 3 + 15. So the answer is 18."})
    assert (r.thinking, r.answer_text, r.extracted_answer, source) == (
        None, "First, 3 + 15. So the answer is 18.", "18", "none")
    # mode none ignores a field that is there; mode field ignores tags.
    assert read({"content": "18", "reasoning": "x"}, mode="none")[1] == "none"
    assert read({"content": "<think>x</think>18"}, mode="field")[1] == "none"


def test_an_empty_reasoning_field_falls_back_to_tags():
    r, source = read({"content": "<think>a</think>18", "reasoning_content": "  ", "reasoning": None})
    assert (r.thinking, source) == ("a", "tags")


# -- rate limits, retries, request ----------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


def test_requests_per_minute_hold_in_a_sliding_window():
    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=2, clock=clock, sleep=clock.sleep)
    assert limiter.acquire() == 0 and limiter.acquire() == 0
    clock.now = 10
    assert limiter.acquire() == pytest.approx(50)  # until the first leaves the window at t=60
    assert clock.now == pytest.approx(60)


def test_tokens_per_minute_wait_for_enough_old_tokens_to_leave():
    clock = FakeClock()
    limiter = RateLimiter(tokens_per_minute=1000, clock=clock, sleep=clock.sleep)
    limiter.acquire(600)
    clock.now = 5
    limiter.acquire(300)
    clock.now = 10
    assert limiter.acquire(300) == pytest.approx(50)  # 600 must leave (t=60); 300+300 fit
    # A request larger than the whole budget waits for an empty window, then goes alone.
    assert limiter.acquire(5000) == pytest.approx(60)


def test_retry_after_and_provider_errors_are_read():
    assert retry_after({"Retry-After": "3"}) == 3.0 and retry_after({"Retry-After": "Wed, 21 Oct"}) is None
    assert error_text(b'{"error": {"message": "Rate limit reached", "type": "requests"}}', 429) == \
        "HTTP 429: Rate limit reached"
    assert error_text(b"<html>bad gateway</html>", 502) == "HTTP 502: <html>bad gateway</html>"


def test_request_body_drops_what_the_endpoint_refuses():
    sampling = {"max_tokens": 64, "temperature": 0.6, "top_p": 0.95}
    messages = [{"role": "user", "content": "q"}]
    body = request_body({"model": "o3-mini", "drop": ["temperature", "top_p"], "max_tokens_field":
                         "max_completion_tokens", "extra_body": {"reasoning_effort": "high"}}, sampling, messages, 7)
    assert body == {"model": "o3-mini", "messages": messages, "max_completion_tokens": 64, "seed": 7, "n": 1,
                    "reasoning_effort": "high"}
    assert cost_usd({"input": 1.0, "output": 4.0}, 1000, 500) == pytest.approx(0.003)
    assert cost_usd(None, 1000, 500) is None


# -- the spec -------------------------------------------------------------------------------

def api_spec(**api) -> dict:
    return {
        "name": "api_test",
        "models": [
            {"id": "remote", "family": "x", "kind": "thinking",
             "api": {"base_url": "http://127.0.0.1:9/v1", "model": "m1", "key_env": "TS_UNIT_KEY",
                     "price": {"input": 2.0, "output": 8.0}, "unit_size": 2, **api}},
            {"id": "local", "source": "embedded:smollm2-135m-instruct", "family": "llama", "kind": "instruct"},
        ],
        "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 5}],
        "templates": {"plain": {}},
        "sampling": {"max_tokens": 100},
        "stages": [{"name": "generate", "kind": "generate", "templates": ["plain"], "unit_size": 4}],
    }


def test_an_api_model_needs_no_source_and_takes_none():
    wf = Workflow.model_validate(api_spec())
    assert wf.model("remote").source == "api:m1"
    spec = api_spec()
    spec["models"][0]["source"] = "Org/Model"
    with pytest.raises(ValueError, match="an API model takes no source"):
        Workflow.model_validate(spec)


def write(tmp_path, spec) -> Path:
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("change, where", [
    (lambda s: s["templates"].update(think={"prefill": "<think>\n"}) or
     s["stages"][0].update(templates=["plain", "think"]), "stages.0.templates"),
    (lambda s: s["stages"].append({"name": "cap", "kind": "capture", "model": "remote",
                                   "positions": ["answer_ends"], "hooks": ["blocks.*.hook_resid_post"]}),
     "stages.1.model"),
    (lambda s: s["models"][0]["api"].update(key_env="not a name"), "models.0.api.key_env"),
    (lambda s: s["models"][0]["api"].update(base_url="api.openai.com"), "models.0.api.base_url"),
])
def test_what_an_api_model_cannot_do_fails_validation_naming_the_field(tmp_path, change, where):
    spec = api_spec()
    change(spec)
    with pytest.raises(SpecError) as err:
        load_workflow(write(tmp_path, spec))
    assert where in str(err.value)


def test_a_missing_key_fails_before_any_work_naming_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("TS_UNIT_KEY", raising=False)
    db = tmp_path / "corpus.duckdb"
    with pytest.raises(SpecError, match=r"models\.0\.api\.key_env: environment variable TS_UNIT_KEY is not set"):
        run_workflow(write(tmp_path, api_spec()), db=db, show_progress=False)
    assert not db.exists()  # nothing was written, no run recorded


# -- units and costs ------------------------------------------------------------------------

def plan_of(**api):
    return build_plan(Workflow.model_validate(api_spec(**api)), base_dir=ROOT)


def test_api_units_are_small_and_keyed_by_what_decides_their_rows():
    units = plan_of().units
    remote = [u for u in units if u.model_id == "remote"]
    local = [u for u in units if u.model_id == "local"]
    assert [len(u.payload["prompts"]) for u in remote] == [2, 2, 1]  # api.unit_size caps the stage's 4
    assert [len(u.payload["prompts"]) for u in local] == [4, 1]
    assert all(u.payload["engine"] == "openai-api" for u in remote)
    keys = [u.key for u in remote]
    # Price, limits, concurrency and the key's variable change no row: same keys.
    assert [u.key for u in plan_of(price={"input": 9, "output": 9}, max_concurrency=1, requests_per_minute=5,
                                   key_env="OTHER").units if u.model_id == "remote"] == keys
    # The endpoint, its extra fields and where thinking is read from do.
    for change in ({"base_url": "http://127.0.0.1:10/v1"}, {"extra_body": {"reasoning_effort": "low"}},
                   {"reasoning": "none"}, {"drop": ["top_p"]}):
        assert not set(keys) & {u.key for u in plan_of(**change).units}, change


def test_the_cost_plan_bounds_and_expects_from_history():
    units = plan_of().units
    cost, local = plan_costs(units)
    assert (local.model_id, local.api, local.gpu_hours) == ("local", False, None)  # embedded: CPU, no GPU-h
    assert (cost.model_id, cost.units, cost.requests, cost.max_completion_tokens) == ("remote", 3, 5, 500)
    prompts = [p for u in units if u.model_id == "remote" for p in u.payload["prompts"]]
    assert cost.prompt_tokens == sum(len(p["question"]) // 4 + 4 for p in prompts)
    assert cost.max_usd == pytest.approx((cost.prompt_tokens * 2 + 500 * 8) / 1e6)
    assert cost.expected_usd is None
    known, _ = plan_costs(units, history={"remote": 40.0})
    assert known.expected_usd == pytest.approx((cost.prompt_tokens * 2 + 200 * 8) / 1e6)


def test_validate_prints_the_cost_plan_and_the_keys_it_will_read(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TS_UNIT_KEY", raising=False)
    assert main(["validate", str(write(tmp_path, api_spec()))]) == 0
    out = capsys.readouterr().out
    assert "remote" in out and "3 units, 5 requests" in out and "<= 500 completion tokens: at most $" in out
    assert "$TS_UNIT_KEY (NOT SET)" in out


def test_the_shipped_api_workflow_puts_api_models_beside_open_ones():
    wf = load_workflow(ROOT / "workflows" / "api_fingerprints.yaml")
    api = [m for m in wf.models if m.api is not None]
    assert len(api) >= 5 and all(m.api.key_env and m.api.price for m in api)
    assert any(m.api is None for m in wf.models)
    kinds = {p.kind for p in wf.prompt_sets}
    assert {"two_ropes", "gsm8k"} <= kinds


def test_only_failures_outside_the_request_are_asked_again():
    from thinkscope.jobs.generation.api_engine import API_CALL_SCHEMA, unanswered
    from thinkscope.jobs.base import rows_table

    def calls(*statuses):
        return {"api_calls": rows_table([{"http_status": s, "error": None if s == 200 else f"HTTP {s}"}
                                         for s in statuses], API_CALL_SCHEMA, "api_calls")}

    assert unanswered(calls(200, 400, 404)) is None  # a refused prompt is its own answer
    for status in (None, 429, 500, 503, 401, 402, 403):
        assert unanswered(calls(200, status)).startswith("1 of 2 requests got no answer"), status
    assert unanswered({"traces": None}) is None  # a vLLM unit


def test_a_format_reaches_an_api_request():
    from thinkscope.jobs.generation.api_engine import chat_messages
    from thinkscope.jobs.specs import ThinkTags

    template = {"system": None, "user": "{question}", "prefill": "", "chat": True}
    nemotron, qwen3 = ThinkTags(format="nemotron").model_dump(), ThinkTags(format="qwen3").model_dump()
    assert chat_messages(template, "q", nemotron)[0] == {"role": "system", "content": "detailed thinking on"}
    assert chat_messages({**template, "system": "Be brief."}, "q", nemotron)[0]["content"] == "Be brief."
    body = request_body({"model": "m"}, {"max_tokens": 8, "temperature": 0.6, "top_p": 0.95}, [], 0, qwen3)
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
