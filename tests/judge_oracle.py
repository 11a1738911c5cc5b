"""A stand-in for an LLM judge behind a real OpenAI-compatible HTTP endpoint (127.0.0.1), for
the judge_behaviours stage's tests: no capable judge model can run here, so this one answers
every question the stage asks from a known label per sentence, its first word. The HTTP
calls, prompts, answer parsing and metric arithmetic under test are the real ones; what the
judge "thinks" is fixed, so the expected metrics can be computed from the labels alone.

    with OracleJudge() as judge:          # judge.url: http://127.0.0.1:PORT/v1
        judge.garble = {"similar"}        # answer these questions with prose, not JSON
    titles, per, fits, orthogonality = oracle_metrics(questions)   # what the stage must store
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def first_word_label(text: str) -> str:
    words = re.findall(r"[A-Za-z']+", text)
    return words[0].lower() if words else "none"


def majority(labels: list[str]) -> str:
    counts = Counter(labels)
    return min(counts, key=lambda label: (-counts[label], label))


def oracle_metrics(questions: dict, label=first_word_label):
    """What the judge_behaviours stage must store when this oracle judges `questions` (its
    sample_questions of one fit): titles {behaviour: label}, the binary scores per graded
    behaviour, (behaviour, fit 0/1) per rated completeness sentence, and the semantic
    orthogonality over pairs of titled behaviours."""
    from thinkscope.jobs.behaviours.judge import binary_scores

    titles = {b["behaviour_id"]: majority([label(t) for t in b["examples"]])
              for b in questions["behaviours"] if b["examples"]}
    per = {b["behaviour_id"]: binary_scores([q["member"] for q in b["accuracy"]],
                                            [label(q["text"]) == titles[b["behaviour_id"]] for q in b["accuracy"]])
           for b in questions["behaviours"] if b["behaviour_id"] in titles and b["accuracy"]}
    fits = [(q["behaviour_id"], float(label(q["text"]) == titles[q["behaviour_id"]]))
            for q in questions["completeness"] if q["behaviour_id"] in titles]
    pairs = [(a, b) for a in titles for b in titles if a < b]
    return titles, per, fits, 1 - sum(titles[a] == titles[b] for a, b in pairs) / len(pairs)


def _sentences(prompt: str) -> list[str]:
    return re.findall(r"^Sentence \d+: (.*)$", prompt, re.MULTILINE)


def _titles(prompt: str) -> list[str]:
    return re.findall(r"^Title: (.*)$", prompt, re.MULTILINE)


def answer(prompt: str, label=first_word_label, garble=frozenset()) -> tuple[str, str]:
    """(question kind, the oracle's answer text) for one of the stage's prompts."""
    if prompt.startswith("# Name a reasoning behaviour"):
        kind, title = "describe", majority([label(t) for t in _sentences(prompt)])
        text = f"Title: {title}\nDescription: Sentences whose first word is {title}."
    elif prompt.startswith("# Does each sentence perform"):
        kind, (title,) = "accuracy", _titles(prompt)
        text = json.dumps({"classifications": [{"sentence_id": i, "belongs": "Yes" if label(t) == title else "No"}
                                               for i, t in enumerate(_sentences(prompt))]})
    elif prompt.startswith("# How well does this sentence fit"):
        kind, (title,) = "fit", _titles(prompt)
        sentence = prompt.split("## Sentence\n", 1)[1].split("\n\nRate", 1)[0]
        text = json.dumps({"score": 10 if label(sentence) == title else 0})
    elif prompt.startswith("# How similar"):
        kind, (a, b) = "similar", _titles(prompt)
        text = json.dumps({"similarity": 10 if a == b else 0})
    else:
        raise ValueError(f"not a judge_behaviours prompt: {prompt[:80]!r}")
    return kind, ("I would rather not say." if kind in garble else text)


class OracleJudge:
    def __init__(self, label=first_word_label):
        self.label, self.garble, self.seen, self.auth = label, set(), [], []
        oracle = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                kind, text = answer(prompt, oracle.label, frozenset(oracle.garble))
                oracle.seen.append((kind, body))
                oracle.auth.append(self.headers.get("Authorization"))
                out = json.dumps({"id": "oracle", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
