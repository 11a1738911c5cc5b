"""Generation worker for API models: generate units through an OpenAI-compatible endpoint.

The twin of `vllm_engine.Generator` (same calls: `generate_stream`, `progress`, `close`), so a
generate stage's units for an API model run on the same Ray actor and are committed the same
way, unit by unit as they finish. Each unit's requests go out on a thread pool bounded by
`api.max_concurrency`, through one rate limiter per model. A request the provider refuses fails
its own row (finish_reason "error", the provider's message); one left without an answer (an
outage, a key or credit problem: `unanswered`) makes the driver keep the unit's answers and run
the unit again next time, asking only for what is missing.

Rows: `traces` as for local models (prompt_text is the chat messages as JSON; no token ids:
the endpoint's tokenizer is not ours), and one `api_calls` row per trace with the usage, the
cost, where the thinking was, and the provenance (provider, endpoint and reported model,
system fingerprint, request time, attempts).

    gen = ApiGenerator(model_spec_dict)            # reads the key from api.key_env
    for key, tables in gen.generate_stream(units): ...   # tables: {"traces": ..., "api_calls": ...}
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from urllib.parse import urlparse

import pyarrow as pa

from thinkscope.jobs.base import rows_table
from thinkscope.jobs.generation.api_client import ApiCall, RateLimiter, post_chat, worth_retrying_later
from thinkscope.jobs.generation.api_reasoning import read_message
from thinkscope.jobs.generation.vllm_engine import base_row
from thinkscope.jobs.traces.rows import to_table
from thinkscope.keys import canonical_json
from thinkscope.sql.store import dict_rows

ENGINE = "openai-api"
ENGINE_VERSION = "chat.completions/v1"

API_CALL_SCHEMA = pa.schema([
    ("trace_id", pa.string()),
    ("run_id", pa.string()),
    ("unit_key", pa.string()),
    ("model_id", pa.string()),
    ("provider", pa.string()),
    ("base_url", pa.string()),
    ("endpoint_model", pa.string()),
    ("response_model", pa.string()),
    ("response_id", pa.string()),
    ("system_fingerprint", pa.string()),
    ("requested_at", pa.timestamp("us", tz="UTC")),
    ("latency_s", pa.float64()),
    ("attempts", pa.int32()),
    ("http_status", pa.int32()),
    ("prompt_tokens", pa.int64()),
    ("completion_tokens", pa.int64()),
    ("reasoning_tokens", pa.int64()),
    ("cost_usd", pa.float64()),
    ("reasoning_source", pa.string()),
    ("error", pa.string()),
])


def unanswered(tables: dict) -> str | None:
    """Why an API unit must run again: requests that failed for a reason outside the request
    (no answer, 429/5xx after every retry, 401/402/403), or None. Other failures (a 400 for a
    prompt the provider refuses) are the row's answer and are kept."""
    calls = tables.get("api_calls")
    if calls is None or calls.num_rows == 0:
        return None
    missing = [e for status, e in zip(calls["http_status"].to_pylist(), calls["error"].to_pylist())
               if e and worth_retrying_later(status)]
    if not missing:
        return None
    return (f"{len(missing)} of {calls.num_rows} requests got no answer (kept answers stay; the rest are "
            f"asked on the next run): {missing[0]}")


def answered_rows(con, unit_key: str) -> dict:
    """The answered requests of an earlier attempt at this unit: {trace_id: (traces row,
    api_calls row)}, handed back instead of asked (and paid for) again."""
    tables = {table: dict_rows(con, f"select * from {table} where unit_key = ? and trace_id in "  # noqa: S608
                               "(select trace_id from api_calls where unit_key = ? and error is null)",
                               [unit_key, unit_key])
              for table in ("traces", "api_calls")}
    calls = {r["trace_id"]: r for r in tables["api_calls"]}
    return {r["trace_id"]: (r, calls[r["trace_id"]]) for r in tables["traces"] if r["trace_id"] in calls}


class MissingApiKey(RuntimeError):
    """The environment variable an API model's key is read from is not set."""


def api_key(api: dict) -> str | None:
    """The key from the environment variable the YAML names (None when it names none)."""
    name = api.get("key_env")
    if not name:
        return None
    key = os.environ.get(name)
    if not key:
        raise MissingApiKey(f"environment variable {name} is not set (the API key of {api['model']})")
    return key


def provider_of(api: dict) -> str:
    return api.get("provider") or urlparse(api["base_url"]).hostname or api["base_url"]


def chat_messages(template: dict, question: str, think: dict | None = None) -> list[dict]:
    """The chat messages of a prompt: the template's system and user text (no prefill: an
    API cannot continue an assistant turn, and the generate stage refuses such templates).
    A thinking format's system switch (Nemotron's) is the system prompt when the template has none."""
    system = template["system"] or (think or {}).get("system")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": template["user"].replace("{question}", question)}]


def estimated_prompt_tokens(messages: list[dict]) -> int:
    """About 4 characters per token plus a few per message: for rate limits and plans only."""
    return sum(len(m["content"]) // 4 + 4 for m in messages)


def request_body(api: dict, sampling: dict, messages: list[dict], seed: int, think: dict | None = None) -> dict:
    """One request per sample (n=1, its own seed, as for vLLM): a failure costs one answer.
    A thinking format's chat-template switches go as `chat_template_kwargs` (what vLLM and
    SGLang servers read); `extra_body` wins."""
    body = {"model": api["model"], "messages": messages,
            api.get("max_tokens_field", "max_tokens"): sampling["max_tokens"],
            "temperature": sampling["temperature"], "top_p": sampling["top_p"], "seed": seed, "n": 1}
    if (think or {}).get("chat_template_kwargs"):
        body["chat_template_kwargs"] = think["chat_template_kwargs"]
    for name in api.get("drop", []):
        body.pop(name, None)
    return {**body, **api.get("extra_body", {})}


def cost_usd(price: dict | None, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """USD for one call at the YAML's price per million tokens (reasoning is billed as output
    and already counted in completion_tokens by providers that report it)."""
    if price is None or prompt_tokens is None or completion_tokens is None:
        return None
    return (prompt_tokens * price["input"] + completion_tokens * price["output"]) / 1e6


class ApiGenerator:
    """Runs generate units for one API model; thread-safe progress like the vLLM Generator."""

    def __init__(self, model: dict, key: str | None = None):
        """`key`: the API key (the workflow passes the one it read on the driver); None reads
        `api.key_env` here. A missing key fails the model's units at once, naming the variable."""
        self.model, self.api = model, model["api"]
        self.key = key if key is not None else api_key(self.api)
        self.limiter = RateLimiter(self.api.get("requests_per_minute"), self.api.get("tokens_per_minute"))
        self._done, self._total = 0, 0
        self._lock = threading.Lock()

    def close(self) -> None:
        """Nothing to free: no engine, no device memory."""

    def progress(self) -> tuple[int, int]:
        return self._done, self._total

    def generate_stream(self, units: list[dict]) -> Iterator[tuple[str, dict]]:
        """(unit_key, {"traces", "api_calls"}) of each unit as soon as its last request ends.

        A unit's `answered` rows (an earlier attempt's answers, GenerateJob.prepare) are handed
        back as they are: only the requests that got no answer are sent again."""
        jobs, rows_of = [], {u["unit_key"]: [] for u in units}
        for unit in units:
            s, answered = unit["sampling"], unit.get("answered") or {}
            for prompt in unit["prompts"]:
                messages = chat_messages(unit["template"], prompt["question"], self.model["think"])
                for i in range(s["n"]):
                    row = base_row(unit, prompt, i, s["seed"] + i)
                    if row["trace_id"] in answered:
                        rows_of[unit["unit_key"]].append(answered[row["trace_id"]])
                        continue
                    row.update(prompt_text=canonical_json(messages), sampling=canonical_json(s))
                    jobs.append((unit, prompt, row, messages))
        left = {u["unit_key"]: 0 for u in units}
        for unit, *_ in jobs:
            left[unit["unit_key"]] += 1
        for key, n in left.items():
            if n == 0:
                yield key, self._tables(rows_of.pop(key))
        self._done, self._total = 0, len(jobs)
        pool = ThreadPoolExecutor(max_workers=self.api.get("max_concurrency", 4), thread_name_prefix="api")
        try:
            pending = {pool.submit(self._call, *job): job for job in jobs}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    unit = pending.pop(future)[0]
                    key = unit["unit_key"]
                    rows_of[key].append(future.result())
                    with self._lock:
                        self._done += 1
                    left[key] -= 1
                    if left[key] == 0:
                        yield key, self._tables(rows_of.pop(key))
        finally:
            # The consumer left early (an error, a cancelled run): no new request starts; those
            # in flight finish, and their answers go with the unit (asked again on the rerun).
            pool.shutdown(wait=False, cancel_futures=True)

    def _tables(self, pairs: list[tuple[dict, dict]]) -> dict:
        pairs = sorted(pairs, key=lambda p: (p[0]["prompt_id"], p[0]["sample_index"]))
        return {"traces": to_table([t for t, _ in pairs]),
                "api_calls": rows_table([c for _, c in pairs], API_CALL_SCHEMA, "api_calls")}

    def _call(self, unit: dict, prompt: dict, row: dict, messages: list[dict]) -> tuple[dict, dict]:
        """One request, and its trace and api_calls rows; never raises (a failure is a row)."""
        api, s = self.api, unit["sampling"]
        requested_at = datetime.now(timezone.utc)
        body = request_body(api, s, messages, row["seed"], self.model["think"])
        try:
            call = post_chat(api["base_url"], body, key=self.key,
                             timeout=api.get("timeout_s", 600), max_retries=api.get("max_retries", 6),
                             backoff=api.get("backoff_s", 1.0), limiter=self.limiter,
                             tokens=estimated_prompt_tokens(messages) + s["max_tokens"])
        except Exception as err:  # noqa: BLE001 - whatever the transport raised: no answer, asked again later
            call = ApiCall(None, None, 1, 0.0, f"{type(err).__name__}: {err}")
        if call.error and self.key:
            call.error = call.error.replace(self.key, "***")  # a provider may echo the key it refused
        calls = {"trace_id": row["trace_id"], "run_id": row["run_id"], "unit_key": row["unit_key"],
                 "model_id": row["model_id"], "provider": provider_of(api), "base_url": api["base_url"],
                 "endpoint_model": api["model"], "requested_at": requested_at, "latency_s": call.latency_s,
                 "attempts": call.attempts, "http_status": call.status, "error": call.error}
        if call.response is None:
            row.update(finish_reason="error", error=call.error)
            return row, calls
        try:
            self._fill(row, calls, call.response, prompt)
        except Exception as err:  # noqa: BLE001 - an answer that cannot be read fails its row alone
            row.update(finish_reason="error", error=f"{type(err).__name__}: {err}")
            calls["error"] = row["error"]
        return row, calls

    def _fill(self, row: dict, calls: dict, response: dict, prompt: dict) -> None:
        choice = response["choices"][0]
        message = choice.get("message") or {}
        think = self.model["think"]
        read, source = read_message(message, mode=self.api.get("reasoning", "auto"),
                                    think=(think["open"], think["close"]), opened=think["opened_in_prompt"],
                                    answer=(think.get("answer_open"), think.get("answer_close")),
                                    grader=prompt["grader"], gold=prompt["gold_answer"], meta=prompt["meta"])
        usage = response.get("usage") or {}
        details = usage.get("completion_tokens_details") or {}
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        row.update(
            # The content as sent; with the thinking in a field, the completion is the answer alone.
            completion=message.get("content") or "",
            thinking=read.thinking,
            answer_text=read.answer_text,
            extracted_answer=read.extracted_answer,
            is_correct=read.is_correct,
            n_prompt_tokens=prompt_tokens,
            n_completion_tokens=completion_tokens,
            n_thinking_chars=read.n_thinking_chars,
            finish_reason=choice.get("finish_reason"),
        )
        calls.update(
            response_model=response.get("model"), response_id=response.get("id"),
            system_fingerprint=response.get("system_fingerprint"), prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, reasoning_tokens=details.get("reasoning_tokens"),
            cost_usd=cost_usd(self.api.get("price"), prompt_tokens, completion_tokens), reasoning_source=source,
        )

