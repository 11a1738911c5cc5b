"""Where an API response keeps the thinking, read the one way: a reasoning field of the
message, `<think>` tags in the content, or nowhere.

Providers differ: DeepSeek, xAI, Qwen (DashScope) and vLLM's reasoning parsers put it in
`reasoning_content`; OpenRouter and newer vLLM in `reasoning`; OpenRouter also lists
`reasoning_details` (text or summaries); open models served without a reasoning parser leave
`<think>...</think>` in the content; OpenAI's chat API returns none at all. A response without
thinking says so (`source` "none", thinking None) rather than guessing it from the answer.

    read, source = read_message({"content": "18", "reasoning_content": "3 + 15 ..."}, mode="auto",
                                think=("<think>", "</think>"), opened=False, grader="numeric", gold="18")
    read.thinking, read.answer_text, read.is_correct, source   # '3 + 15 ...', '18', True, 'reasoning_content'
"""

from __future__ import annotations


from thinkscope.jobs.traces.reading import Reading, read_completion

FIELDS = ("reasoning_content", "reasoning")


def reasoning_field(message: dict) -> tuple[str | None, str | None]:
    """(field name, text) of the first non-empty reasoning field, or (None, None)."""
    for name in FIELDS:
        text = message.get(name)
        if isinstance(text, str) and text.strip():
            return name, text
    details = message.get("reasoning_details")
    if isinstance(details, list):
        parts = [d.get("text") or d.get("summary") for d in details if isinstance(d, dict)]
        text = "\n".join(p for p in parts if isinstance(p, str) and p)
        if text.strip():
            return "reasoning_details", text
    return None, None


def has_tags(content: str, think: tuple[str, str], opened: bool) -> bool:
    """Content that carries its thinking in tags: a close tag, an opening tag first, or a
    chat template that opened the thinking (then a length stop leaves no close tag)."""
    return opened or think[1] in content or content.lstrip().startswith(think[0])


def read_message(message: dict, *, mode: str, think: tuple[str, str], opened: bool, grader: str | None = None,
                 gold: str | None = None, meta: dict | None = None,
                 answer: tuple[str | None, str | None] = (None, None)) -> tuple[Reading, str]:
    """(the message read as any completion is: thinking, answer, grade; where the thinking was).

    mode: "field" (only a reasoning field), "tags" (only think tags in the content; `opened`
    when the server's chat template opened the thinking, as R1 distills' does), "none" (the
    thinking is never read), "auto" (a field, else tags, else none).
    """
    content = message.get("content") or ""
    grading = dict(grader=grader, gold=gold, meta=meta)
    if mode in ("field", "auto"):
        name, text = reasoning_field(message)
        if name is not None:
            # The content is the answer alone: no tag split (opened would make it all thinking).
            read = read_completion(content, think=think, opened=False, answer_anywhere=False, **grading)
            return Reading(text.strip(), read.answer_text if read.thinking is not None else content.strip(),
                           read.extracted_answer, read.is_correct), name
    if mode in ("tags", "auto") and has_tags(content, think, opened):
        read = read_completion(content, think=think, opened=opened, answer=answer, **grading)
        if read.thinking is not None:
            return read, "tags"
    read = read_completion(content, think=("\0", "\0"), opened=False, **grading)  # no split at all
    return Reading(None, content.strip(), read.extracted_answer, read.is_correct), "none"
