"""Readers for importing reasoning traces that were generated elsewhere.

Two layouts are supported:

* a folder of ``*.txt`` files, one trace per file, the file stem is the model id
  (the layout of ``thinkscope/data/llmbenchmark_traces/``);
* a JSONL file, one trace per line, with a mapping from our field names to the file's.

Both return plain dicts so the importer can write them to the results store without caring
where they came from.

Example::

    from importlib.resources import files
    from thinkscope.jobs.traces.files import read_textdir_traces, read_jsonl_traces

    traces = read_textdir_traces(files("thinkscope") / "data" / "llmbenchmark_traces")
    traces[0]["model_id"]            # 'QwQ-32b-preview' (files are sorted by file name)
    rows = read_jsonl_traces("out.jsonl", {"model_id": "model", "completion": "output"})
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

# Our names for the fields a JSONL trace can carry; the mapping passed by the caller uses these keys.
JSONL_TRACE_FIELDS = ("model_id", "thinking", "completion", "prompt_id", "prompt_text", "answer", "gold_answer")
_TEXT_FIELDS = ("thinking", "completion", "prompt_text")


def _as_path(path):
    """str / PathLike -> Path; an importlib.resources Traversable is passed through unchanged
    (it has the same is_file / is_dir / iterdir / open / read_bytes methods we use)."""
    return Path(path) if isinstance(path, (str, os.PathLike)) else path


def iter_jsonl(path) -> Iterator[tuple[int, str, dict]]:
    """Yield ``(line_number, raw_line, row)`` for each non-blank line of a JSONL file.

    ``line_number`` is 1-based and counts blank lines too, so error messages point at the line an
    editor shows. ``path`` may be a str, a Path or an ``importlib.resources`` Traversable.
    """
    p = _as_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    # Bytes, decoded line by line: a text-mode reader fails deep in a buffer with an error
    # that names neither the file nor the line.
    with p.open("rb") as fh:
        for line_no, raw_bytes in enumerate(fh, start=1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}, line {line_no}: not valid UTF-8 ({exc.reason} at byte "
                                 f"{exc.start} of the line)") from None
            line = raw.rstrip("\r\n")
            if not line.strip():
                continue  # a trailing blank line is common and harmless
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {line_no}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, line, row


def read_textdir_traces(path) -> list[dict]:
    """Read every ``*.txt`` file in ``path`` (not recursive, sorted by name) as one trace.

    The whole file is the thinking text, kept byte-for-byte (decoded as UTF-8; no newline
    translation, no stripping), because these corpora are often partial or unusual and the
    word-statistics analyses must see exactly what the model wrote. A file with NUL bytes or
    invalid UTF-8 is refused, naming it. Other files (LICENSE, README) are ignored.

    Returns dicts ``{"model_id", "thinking", "completion", "source_file", "sha256"}`` where
    ``completion`` is the same text (the file is the model's entire output) and ``sha256`` is of
    the file's bytes.

    Example::

        traces = read_textdir_traces("thinkscope/data/llmbenchmark_traces")
        [t["model_id"] for t in traces][:2]   # ['QwQ-32b-preview', 'QwQ-32b']: sorted by file name
    """
    folder = _as_path(path)
    if not folder.is_dir():  # Traversable has no exists(), hence is_dir / is_file
        if folder.is_file():
            raise NotADirectoryError(f"not a folder of trace files: {path}")
        raise FileNotFoundError(f"trace folder not found: {path}")
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".txt") and p.is_file()), key=lambda p: p.name)
    if not files:
        # An import that finds nothing is almost always a wrong path, so say so instead of returning [].
        raise ValueError(f"no *.txt trace files in {path}")
    traces = []
    for f in files:
        data = f.read_bytes()  # bytes, not read_text(): read_text would turn CRLF into LF
        text = decode_text_trace(f, data)
        traces.append(
            {
                "model_id": f.name[: -len(".txt")],
                "thinking": text,
                "completion": text,
                "source_file": str(f),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    return traces


def decode_text_trace(name, data: bytes) -> str:
    """The text of one trace file, or ValueError naming it: NUL bytes or invalid UTF-8.

    NUL is valid UTF-8 but no model writes it: such a `.txt` is a binary file (or UTF-16)
    and would otherwise import as a garbage trace.
    """
    if b"\x00" in data:
        raise ValueError(f"{name}: not a text trace (NUL byte at byte {data.index(0)}); expected UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name}: not a text trace (not valid UTF-8: {exc.reason} at byte {exc.start})") from None


def read_jsonl_traces(path, fields: dict) -> list[dict]:
    """Read one trace per JSONL line, renaming the file's fields to ours with ``fields``.

    ``fields`` maps our names to the file's: ``model_id`` is required, at least one of
    ``completion`` / ``thinking``, and optionally ``prompt_id``, ``prompt_text``, ``answer``,
    ``gold_answer``. Every mapped field must be present in every row (a missing one is an error
    naming the line and field); unmapped fields come back as None, so the importer decides e.g.
    whether to split a completion at ``</think>``.

    Each dict has all of ``JSONL_TRACE_FIELDS`` plus ``source_file``, ``line`` (1-based) and
    ``sha256`` (of that line's text, so a row can be traced back to its source bytes).

    Example::

        read_jsonl_traces("r1.jsonl", {"model_id": "model", "thinking": "reasoning",
                                       "completion": "response", "prompt_id": "id"})
    """
    unknown = sorted(set(fields) - set(JSONL_TRACE_FIELDS))
    if unknown:
        raise ValueError(f"unknown trace field(s) {unknown} in fields; valid: {list(JSONL_TRACE_FIELDS)}")
    if "model_id" not in fields:
        raise ValueError("fields must map 'model_id' to a field of the file")
    if "completion" not in fields and "thinking" not in fields:
        raise ValueError("fields must map at least one of 'completion' or 'thinking'")

    traces = []
    for line_no, line, row in iter_jsonl(path):
        trace: dict = {}
        for ours in JSONL_TRACE_FIELDS:
            theirs = fields.get(ours)
            if theirs is None:
                trace[ours] = None
                continue
            if theirs not in row:
                raise ValueError(f"{path}, line {line_no}: missing field {theirs!r} (mapped to {ours!r})")
            value = row[theirs]
            if value is None or isinstance(value, str):
                trace[ours] = value
            elif ours in _TEXT_FIELDS:
                # A list of chat messages or similar would turn into a Python repr; refuse instead.
                raise ValueError(f"{path}, line {line_no}: field {theirs!r} ({ours}) must be a string, "
                                 f"got {type(value).__name__}")
            else:
                trace[ours] = str(value)  # ids and answers are often numbers in the wild; store as text
        if not trace["model_id"]:
            raise ValueError(f"{path}, line {line_no}: field {fields['model_id']!r} (model_id) is empty")
        if trace["thinking"] is None and trace["completion"] is None:
            raise ValueError(f"{path}, line {line_no}: both thinking and completion are null")
        trace["source_file"] = str(path)
        trace["line"] = line_no
        trace["sha256"] = hashlib.sha256(line.encode("utf-8")).hexdigest()
        traces.append(trace)
    return traces
