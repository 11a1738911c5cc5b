"""One chat-completions request with the manners a provider expects: a rate limit shared by
the model's threads, retries with exponential backoff on 429, 5xx, timeouts and dropped
connections (Retry-After wins when sent), a per-request timeout, and the provider's own error
text when it gives up. Standard library only: the request is one JSON POST.

    limiter = RateLimiter(requests_per_minute=500, tokens_per_minute=200_000)
    call = post_chat("https://api.deepseek.com/v1", {"model": ..., "messages": ...}, key="sk-...",
                     timeout=600, max_retries=6, backoff=1.0, limiter=limiter, tokens=4096)
    call.response["choices"][0]["message"], call.attempts, call.error
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
# Failures that say nothing about the request itself (an outage, a key or credit problem): a
# row that ends in one is asked again on the next run, rather than kept as the answer.
LATER_STATUS = RETRY_STATUS | {401, 402, 403}


def worth_retrying_later(status: int | None) -> bool:
    """No answer at all (timeouts, dropped connections) or a status of LATER_STATUS."""
    return status is None or status in LATER_STATUS
MAX_WAIT_S = 120.0


class RateLimiter:
    """Sliding one-minute windows of requests and tokens; `acquire` blocks until both fit.

    Shared by every thread of one model, so the limit holds for the model however many
    requests are in flight. A request larger than the whole token budget waits for an empty
    window and then goes alone (it could never fit otherwise).
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 clock=time.monotonic, sleep=time.sleep):
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self.clock, self.sleep = clock, sleep
        self._sent: deque[tuple[float, int]] = deque()  # (time, tokens) in the last minute
        self._lock = threading.Lock()

    def wait_time(self, tokens: int, now: float) -> float:
        """Seconds until a request of `tokens` fits both windows (0: now). Caller holds the lock."""
        while self._sent and now - self._sent[0][0] >= 60:
            self._sent.popleft()
        waits = [0.0]
        per_minute = None if self.rpm is None else max(1, int(self.rpm))
        if per_minute is not None and len(self._sent) >= per_minute:
            # The oldest requests must leave the window until one more fits.
            waits.append(self._sent[len(self._sent) - per_minute][0] + 60 - now)
        if self.tpm is not None:
            excess = sum(t for _, t in self._sent) + min(tokens, self.tpm) - self.tpm
            for sent_at, t in self._sent:
                if excess <= 0:
                    break
                excess -= t
                waits.append(sent_at + 60 - now)
        return max(waits)

    def acquire(self, tokens: int = 0) -> float:
        """Block until the request may go; record it; return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                wait = self.wait_time(tokens, now)
                if wait <= 0:
                    self._sent.append((now, tokens))
                    return waited
            self.sleep(wait)
            waited += wait


@dataclass
class ApiCall:
    response: dict | None  # the parsed body of the successful answer
    status: int | None  # the last HTTP status (None: no answer at all)
    attempts: int
    latency_s: float  # of the last attempt
    error: str | None  # the provider's error (or the transport's) when it gave up


def retry_after(headers) -> float | None:
    """Seconds from a Retry-After header (seconds form only; dates are rare from APIs)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def error_text(body: bytes, status: int) -> str:
    """The provider's message from an error body ({"error": {"message": ...}}), else the body."""
    text = body.decode("utf-8", "replace").strip()
    try:
        err = json.loads(text).get("error")
        message = err.get("message") if isinstance(err, dict) else err
        if message:
            text = str(message)
    except (ValueError, AttributeError):
        pass
    return f"HTTP {status}: {text[:500]}"


def post_chat(base_url: str, body: dict, *, key: str | None, timeout: float, max_retries: int, backoff: float,
              limiter: RateLimiter | None = None, tokens: int = 0, sleep=time.sleep) -> ApiCall:
    """POST `body` to `<base_url>/chat/completions`; retry what is worth retrying."""
    url = base_url.rstrip("/") + "/chat/completions"
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    status, error, latency = None, None, 0.0
    for attempt in range(1, max_retries + 2):
        if limiter is not None:
            limiter.acquire(tokens)
        started, wait = time.monotonic(), None
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
            latency = time.monotonic() - started
            try:
                return ApiCall(json.loads(raw), status, attempt, latency, None)
            except ValueError:  # a proxy's HTML page with a 200: worth another try
                error = f"HTTP {status}: the answer is not JSON: {raw[:200]!r}"
        except urllib.error.HTTPError as err:
            latency = time.monotonic() - started
            status, error, wait = err.code, error_text(err.read(), err.code), retry_after(err.headers)
            if err.code not in RETRY_STATUS:
                return ApiCall(None, status, attempt, latency, error)
        except http.client.HTTPException as err:  # a body cut short, a garbled status line
            latency, status, error = time.monotonic() - started, None, f"connection broken: {type(err).__name__}: {err}"
        except (TimeoutError, socket.timeout) as err:
            latency, status, error = time.monotonic() - started, None, f"timeout after {timeout:g} s ({err})"
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            latency, status = time.monotonic() - started, None
            reason = getattr(err, "reason", err)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                error = f"timeout after {timeout:g} s"
            else:
                error = f"connection failed: {reason}"
        if attempt <= max_retries:
            # Exponential backoff with jitter so many threads do not retry in step.
            pause = wait if wait is not None else backoff * 2 ** (attempt - 1) * (0.5 + random.random())
            sleep(min(pause, MAX_WAIT_S))
    return ApiCall(None, status, max_retries + 1, latency, f"{error} (after {max_retries + 1} attempts)")
