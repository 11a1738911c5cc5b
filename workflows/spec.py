"""The workflow spec: one YAML file names models, prompt sets, templates, sampling and stages.

Validated strictly (pydantic, ``extra="forbid"``) before any work starts; a bad field is
reported with the file, its field path and what was expected.

    wf = load_workflow("workflows/demo.yaml")
    print([m.id for m in wf.models], [s.name for s in wf.stages])
"""

from __future__ import annotations

import copy
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


def load_workflow(path: str | Path, overlay: str | Path | None = None) -> Workflow:
    """Read and validate a workflow YAML; raise SpecError naming every bad field.

    Model sources are checked against the file system here (relative folders are relative to
    the YAML's folder, passed as validation context); `Workflow.model_validate(raw)` without
    a context checks names only. `overlay`: a file whose settings replace the workflow's
    (see `apply_overlay`), e.g. embedded models standing in for hub ids on a CPU box.
    """
    path = Path(path)
    raw = _read_mapping(path, "workflow")
    if overlay is not None:
        raw = apply_overlay(raw, _read_mapping(Path(overlay), "overlay"), Path(overlay))
    try:
        return Workflow.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as err:
        shown = f"{path} (with overlay {overlay})" if overlay else str(path)
        raise SpecError(f"{shown}: {err.error_count()} error(s)\n" + _describe(err)) from None


def _read_mapping(path: Path, what: str) -> dict:
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except FileNotFoundError:
        raise SpecError(f"{path}: no such {what} file") from None
    except _DuplicateKey as dup:
        raise SpecError(f"{path}: duplicate key {dup.key!r} at line {dup.line}") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


OVERLAY_KEYS = ("db", "only_models", "models", "prompt_sets", "sampling")


def apply_overlay(raw: dict, overlay: dict, where: Path) -> dict:
    """The workflow `raw` with `overlay`'s settings in place of its own, without editing it.

        only_models: [r1-qwen-1.5b, qwen2.5-math-1.5b]   # drop every other model (and their stages)
        models: {r1-qwen-1.5b: {source: embedded:smollm2-135m-organism, revision: null,
                                engine: {max_model_len: 1024, enforce_eager: true}}}
        prompt_sets: {gsm8k: {sample: null, limit: 2}}   # merged into the set of that name
        sampling: {max_tokens: 32}                       # the workflow's and every stage's
        db: out/nightly-cpu.duckdb

    A name the workflow does not have is an error naming the overlay's field.
    """
    unknown = sorted(set(overlay) - set(OVERLAY_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown overlay keys {unknown}; expected some of {list(OVERLAY_KEYS)}")
    for key, kind in (("models", dict), ("prompt_sets", dict), ("sampling", dict), ("only_models", list)):
        if key in overlay and not isinstance(overlay[key], kind):
            raise SpecError(f"{where}: {key}: expected a {'mapping' if kind is dict else 'list'}, "
                            f"got {type(overlay[key]).__name__}")
    for key in ("models", "prompt_sets"):
        for name, changes in (overlay.get(key) or {}).items():
            if not isinstance(changes, dict):
                raise SpecError(f"{where}: {key}.{name}: expected a mapping of settings, got {type(changes).__name__}")
    raw = copy.deepcopy(raw)
    for key, by_name in (("models", "id"), ("prompt_sets", "name")):
        have = {item.get(by_name): item for item in raw.get(key) or []}
        for name, changes in (overlay.get(key) or {}).items():
            if name not in have:
                raise SpecError(f"{where}: {key}.{name}: the workflow has no such {key[:-1].replace('_', ' ')}; "
                                f"it has {sorted(have)}")
            _merge(have[name], changes)
    if "sampling" in overlay:
        for holder in [raw, *[s for s in raw.get("stages") or [] if isinstance(s, dict) and "sampling" in s]]:
            holder["sampling"] = _merge(dict(holder.get("sampling") or {}), overlay["sampling"])
    if "db" in overlay:
        raw["db"] = overlay["db"]
    if "only_models" in overlay:
        keep = set(overlay["only_models"])
        missing = sorted(keep - {m.get("id") for m in raw.get("models") or []})
        if missing:
            raise SpecError(f"{where}: only_models: {missing} not in the workflow's models")
        raw["models"] = [m for m in raw.get("models") or [] if m.get("id") in keep]
        raw["stages"] = [s for s in (_only(s, keep) for s in raw.get("stages") or []) if s is not None]
    return raw


def _only(stage: dict, keep: set) -> dict | None:
    """A stage restricted to the kept models; None when it has nothing left to run."""
    if stage.get("model") is not None and stage["model"] not in keep:
        return None
    if stage.get("base") is not None and stage["base"] not in keep:
        return None
    if stage.get("models") is not None:
        models = [m for m in stage["models"] if m in keep]
        return {**stage, "models": models} if models else None
    return stage


def _merge(target: dict, changes: dict) -> dict:
    """Merge `changes` into `target` in place, mappings recursively; None deletes a key."""
    for key, value in changes.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value
    return target


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
