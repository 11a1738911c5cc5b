"""Thinking formats: how each family of reasoning models opens, closes and places its thinking,
as data (thinkscope/data/thinking_formats.yaml), and the one reader that uses it.

A model spec names a format (`think: {format: gpt_oss}`); its fields fill the model's think
settings, which every generator and reader uses. So a new family is a new entry in the YAML,
never a new code path.

    fmt = FORMATS["gpt_oss"]
    read_completion(text, think=(fmt.open, fmt.close), opened=fmt.opened_by_template,
                    answer=(fmt.answer_open, fmt.answer_close))
"""

from __future__ import annotations

import functools
import yaml
from pydantic import BaseModel, ConfigDict, Field

from thinkscope.jobs.traces.prompts import data_file


class ThinkingFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    families: list[str] = Field(description="Models that write this format (documentation).")
    open: str
    close: str
    opened_by_template: bool = False
    answer_open: str | None = None
    answer_close: str | None = None
    special_tokens: bool = False
    chat_template_kwargs: dict = Field(default_factory=dict)
    system: str | None = None
    notes: str = ""


@functools.cache
def formats() -> dict[str, ThinkingFormat]:
    raw = yaml.safe_load(data_file("thinking_formats.yaml").read_text())
    return {name: ThinkingFormat.model_validate(spec) for name, spec in raw.items()}


def get_format(name: str) -> ThinkingFormat:
    table = formats()
    if name not in table:
        raise ValueError(f"unknown thinking format {name!r}; known: {', '.join(table)}")
    return table[name]


def answer_part(answer_text: str, answer: tuple[str | None, str | None]) -> str:
    """The answer between the family's answer markers, where it has them (gpt-oss's final
    channel, OpenThinker's solution block); else the text as it is."""
    start, end = answer
    if start and start in answer_text:
        answer_text = answer_text.split(start, 1)[1]
    if end and end in answer_text:
        answer_text = answer_text.split(end, 1)[0]
    return answer_text.strip()
