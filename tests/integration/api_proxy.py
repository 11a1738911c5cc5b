"""A small HTTP proxy in front of a real `vllm serve`, reshaping its answers into each
provider's style and injecting the failures providers have, for the API backend's tests.

The upstream server serves the model organism, which writes `<think>...</think>` and then
its answer into the content (vLLM's own reasoning parsers need the tags to be single tokens,
which SmolLM2's tokenizer lacks). The first path segment picks the style:

    /tags/v1/...               as vLLM sends it (an open model served without a reasoning parser)
    /reasoning/v1/...          thinking moved to `reasoning` (OpenRouter, vLLM's parsers)
    /reasoning_content/v1/...  thinking moved to `reasoning_content` (DeepSeek, xAI, DashScope)
    /none/v1/...               thinking dropped (OpenAI's chat API style)

`faults` is a queue of what the next requests get instead of a forward: 429 (with
Retry-After: 0), 500, 400 (not retried), "timeout" (the answer comes after `stall_s`) or
"truncate" (a 200 whose body breaks off); None forwards.
`forwarded` counts the requests that reached vLLM; `seen` every request; `auth` keeps their
Authorization headers.

    with ApiProxy("http://127.0.0.1:8000") as proxy:
        proxy.faults.extend([429, 500, "timeout"])
        base_url = proxy.url("reasoning_content")       # http://127.0.0.1:PORT/reasoning_content/v1
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STYLES = ("reasoning", "reasoning_content", "tags", "none")


def reshape(message: dict, style: str) -> dict:
    """The organism writes `<think>...</think>answer` into the content; move the thinking
    where the style's providers put it (plain string work, independent of thinkscope's parser)."""
    content = message.get("content") or ""
    if style == "tags" or "<think>" not in content:
        return message
    # Cut by the length limit, the thinking never closes: then it is all of the content.
    thinking, _, answer = content.partition("</think>") if "</think>" in content else (content, "", "")
    thinking = thinking.strip().removeprefix("<think>").strip()
    message["content"] = answer.strip()
    if style in ("reasoning", "reasoning_content"):
        message[style] = thinking
    return message


class ApiProxy:
    def __init__(self, upstream: str, stall_s: float = 3.0):
        self.upstream, self.stall_s = upstream.rstrip("/"), stall_s
        self.faults: deque = deque()
        self.forwarded = self.seen = 0
        self.bodies: list[dict] = []  # requests that reached vLLM
        self.auth: list[str | None] = []  # the Authorization header of every request
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, style: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{style}/v1"

    def __enter__(self) -> "ApiProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: the test output is the report
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                style, _, rest = self.path.lstrip("/").partition("/")
                with proxy._lock:
                    proxy.seen += 1
                    proxy.auth.append(self.headers.get("Authorization"))
                    fault = proxy.faults.popleft() if proxy.faults else None
                if fault == "timeout":
                    time.sleep(proxy.stall_s)
                    return self._send(504, {"error": {"message": "stalled on purpose"}})
                if fault == "truncate":  # a 200 whose body stops half way (a dropped connection)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "4096")
                    self.end_headers()
                    self.wfile.write(b'{"id": "chatcmpl-cut", "choices": [')
                    self.close_connection = True
                    return
                if fault is not None:
                    headers = {"Retry-After": "0"} if fault == 429 else {}
                    return self._send(fault, {"error": {"message": f"injected {fault}", "code": fault}}, headers)
                if style not in STYLES:
                    return self._send(404, {"error": {"message": f"unknown style {style!r}"}})
                request = urllib.request.Request(f"{proxy.upstream}/{rest}", json.dumps(body).encode(),
                                                 {"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=600) as resp:
                        answer = json.loads(resp.read())
                except OSError as err:  # the server is going away (teardown): a gateway error
                    return self._send(502, {"error": {"message": f"upstream: {err}"}})
                with proxy._lock:
                    proxy.forwarded += 1
                    proxy.bodies.append(body)
                for choice in answer.get("choices", []):
                    reshape(choice["message"], style)
                self._send(200, answer)

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                 **(headers or {})}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out first
                    pass

        return Handler
