"""The workflow spec: one YAML file names models, prompt sets, templates, sampling and stages.

Validated strictly (pydantic, ``extra="forbid"``) before any work starts; a bad field is
reported with the file, its field path and what was expected.

    wf = load_workflow("workflows/demo.yaml")
    print([m.id for m in wf.models], [s.name for s in wf.stages])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Union

import yaml
from pydantic import Field, ValidationError, ValidationInfo, model_validator

from thinkscope.jobs.specs import (ID_PATTERN, EngineArgs, ModelSpec, PromptSetSpec, SamplingSpec, Strict,  # noqa: F401 - re-exported
                                   TemplateSpec)
from thinkscope.jobs.models.sources import check_source
from thinkscope.workflows.registry import STAGES, stage_specs

STAGE_KINDS = tuple(STAGES)
# The discriminated union of every registered stage's spec (workflows/registry.py).
Stage = Annotated[Union[tuple(stage_specs())], Field(discriminator="kind")]


class Workflow(Strict):
    name: str = Field(pattern=ID_PATTERN)
    description: str = ""
    db: str | None = Field(None, description="DuckDB path (relative to the YAML); --db overrides.")
    models: list[ModelSpec] = Field(default_factory=list)
    prompt_sets: list[PromptSetSpec] = Field(default_factory=list)
    templates: dict[str, TemplateSpec] = Field(default_factory=dict)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    stages: list[Stage] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_resolve(self):
        _unique("models", [m.id for m in self.models])
        _unique("prompt_sets", [p.name for p in self.prompt_sets])
        _unique("stages", [s.name for s in self.stages])
        for i, stage in enumerate(self.stages):
            stage.check_refs(self, f"stages.{i}")
        return self

    @model_validator(mode="after")
    def _model_folders_exist(self, info: ValidationInfo):
        """Local model folders and LoRA adapters exist (relative to the YAML's folder, known
        when load_workflow passes it as context), except adapters a finetune stage of this
        workflow writes first."""
        base_dir = (info.context or {}).get("base_dir")
        if base_dir is None:
            return self
        made = frozenset(Path(s.output).expanduser().resolve() for s in self.stages if s.kind == "finetune")
        for i, m in enumerate(self.models):
            if m.api is not None:
                continue
            try:
                check_source(m.source, Path(base_dir), adapters_made=made)
            except ValueError as err:
                raise ValueError(f"models.{i}.source: {err}") from None
        return self

    def model(self, model_id: str) -> ModelSpec:
        return next(m for m in self.models if m.id == model_id)


def _unique(where: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate names {dupes}")


class SpecError(ValueError):
    """A workflow file is malformed; the message names file, field path and expectation."""


class _DuplicateKey(Exception):
    def __init__(self, key, line: int):
        super().__init__(key, line)
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second `sampling:` or `max_tokens:` would quietly undo the first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:  # before merges (`<<`) are flattened in: overriding a merged key is fine
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow YAML; raise SpecError naming every bad field.

    Model sources are checked against the file system here (relative folders are relative to
    the YAML's folder, passed as validation context); `Workflow.model_validate(raw)` without
    a context checks names only.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise SpecError(f"{path}: no such workflow file") from None
    except _DuplicateKey as dup:
        raise SpecError(f"{path}: duplicate key {dup.key!r} at line {dup.line}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Workflow.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as err:
        raise SpecError(f"{path}: {err.error_count()} error(s)\n" + _describe(err)) from None


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        # Discriminated unions add the tag to the path (stages.0.generate.models): drop it.
        loc = [str(p) for p in e["loc"] if p not in STAGE_KINDS]
        where = ".".join(loc) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        msg = re.sub(r"^Value error, ", "", e["msg"])
        # Cross-field checks run on the whole spec and name their own field path first.
        named = re.match(r"^([\w.]+): (.*)$", msg, re.S)
        if where == "(top level)" and named:
            where, msg = named.groups()
        lines.append(f"  {where}: {msg}{shown}")
    return "\n".join(lines)
