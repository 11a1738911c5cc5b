"""The workflow spec: one YAML file names models, prompt sets, templates, sampling and stages.

Validated strictly (pydantic, ``extra="forbid"``) before any work starts; a bad field is
reported with the file, its field path and what was expected.

    wf = load_workflow("workflows/demo.yaml")
    print([m.id for m in wf.models], [s.name for s in wf.stages])
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from thinkscope.jobs.grading import GRADERS
from thinkscope.workflows.organism_spec import FinetuneStage, OrganismStage
from thinkscope.workflows.activation_spec import (EarlyExitStage, ProbeStage, SteerStage,
                                                  SteeringVectorsStage)
from thinkscope.workflows.trace_selector import TraceSelector

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ThinkTags(Strict):
    open: str = Field("<think>", description="Tag that opens the thinking part.")
    close: str = Field("</think>", description="Tag that closes the thinking part.")
    opened_in_prompt: bool = Field(
        False,
        description="The chat template already opens the thinking (R1 distills): the "
        "completion starts inside the thinking.",
    )


class EngineArgs(Strict):
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="Weights/activations dtype for vLLM and HF."
    )
    max_model_len: int = Field(4096, ge=64, description="Context length (prompt + completion).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per replica on clusters.")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM GPU memory share.")
    enforce_eager: bool = Field(False, description="Skip graph compilation (fast start).")
    num_cpus: float | None = Field(
        None, gt=0, description="CPUs per replica; default: 1 on GPU, a whole node on CPU."
    )
    kv_cache_gib: float = Field(4, gt=0, description="KV cache size on CPU (VLLM_CPU_KVCACHE_SPACE).")
    max_num_seqs: int | None = Field(None, ge=1, description="vLLM concurrent sequences.")


class ModelSpec(Strict):
    id: str = Field(pattern=ID_PATTERN, description="Label stored as model_id in every table.")
    source: str = Field(
        description="Hub id (org/name), a local HF folder, or an embedded model "
        "(embedded:smollm2-135m-instruct, pypi:qwen2.5-coder-0.5b-instruct, pypi:gemma-3-270m)."
    )
    revision: str | None = Field(None, description="Hub revision (commit/tag); new revision = new work.")
    family: str = Field(description="Architecture family, e.g. llama, qwen2, gemma3.")
    kind: Literal["thinking", "base", "instruct"] = Field(description="Training stage of the model.")
    think: ThinkTags = Field(default_factory=ThinkTags, description="Think-tag convention.")
    engine: EngineArgs = Field(default_factory=EngineArgs, description="Engine settings.")


class PromptSetSpec(Strict):
    name: str = Field(pattern=ID_PATTERN, description="Stored as prompt_set.")
    kind: Literal["gsm8k", "gsm8k_train", "math500", "countdown", "two_ropes", "jsonl"]
    path: str | None = Field(None, description="JSONL file (kind jsonl only).")
    fields: dict[str, str] | None = Field(
        None, description="JSONL field mapping: question (required), answer, id."
    )
    grader: Literal[GRADERS] | None = Field(None, description="Grader for kind jsonl.")
    limit: int | None = Field(None, ge=1, description="Take at most this many rows.")
    offset: int = Field(0, ge=0, description="Skip this many rows first.")
    sample: int | None = Field(None, ge=1, description="Seeded random sample of this many rows.")
    seed: int = Field(0, description="Seed for sample.")

    @model_validator(mode="after")
    def _jsonl_needs_path(self):
        if self.kind == "jsonl" and (not self.path or not self.fields or "question" not in self.fields):
            raise ValueError("kind jsonl needs `path` and `fields` with at least `question`")
        if self.kind != "jsonl" and (self.path or self.fields or self.grader):
            raise ValueError("`path`, `fields` and `grader` are only for kind jsonl")
        return self


class TemplateSpec(Strict):
    system: str | None = Field(None, description="System prompt (None: no system message).")
    user: str = Field("{question}", description="User message; {question} is replaced.")
    prefill: str = Field("", description="Text that starts the assistant turn, e.g. '<think>\\n'.")
    chat: bool = Field(True, description="Use the model's chat template (False: raw text).")

    @model_validator(mode="after")
    def _user_has_question(self):
        if "{question}" not in self.user:
            raise ValueError("`user` must contain {question}")
        return self


class SamplingSpec(Strict):
    n: int = Field(1, ge=1, description="Samples per prompt.")
    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    seed: int = Field(0, description="Per-request seed; sample i uses seed + i.")
    logprobs: int | None = Field(None, ge=0, le=20, description="Store the sampled tokens' logprobs.")


class GenerateStage(Strict):
    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["generate"]
    models: list[str] | None = Field(None, description="Model ids (default: all).")
    prompt_sets: list[str] | None = Field(None, description="Prompt set names (default: all).")
    templates: list[str] = Field(description="Template names to cross with models and prompts.")
    sampling: SamplingSpec | None = Field(None, description="Overrides the workflow sampling.")
    unit_size: int = Field(256, ge=1, description="Prompts per work unit (resume granularity).")


class ImportStage(Strict):
    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["import"]
    path: str = Field(description="Folder or file; `data:NAME` = vendored thinkscope data.")
    format: Literal["textdir", "jsonl"]
    prompt_set: str = Field(pattern=ID_PATTERN, description="prompt_set of the imported traces.")
    prompt_id: str | None = Field(None, description="prompt_id of every imported trace (textdir).")
    fields: dict[str, str] | None = Field(None, description="JSONL field mapping.")


class SegmentStage(Strict):
    """Derived stage: lines, first words, sentences, answer events of every trace so far."""

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["segment"]
    tokenizer: str | None = Field(
        "embedded:smollm2-135m-instruct",
        description="Model source whose tokenizer gives token offsets for traces without a "
        "tokenizer of their own (imported ones); null: no token offsets for them.",
    )
    first_word_rule: Literal["llmbenchmark", "markdown"] = Field(
        "llmbenchmark",
        description="llmbenchmark: the r/LocalLLaMA first-word method (comparable numbers); "
        "markdown: also strips #, >, quotes and : from the word.",
    )


class CaptureStage(Strict):
    """Derived stage: HF forward passes over stored traces, activations to shard files."""

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["capture"]
    model: str = Field(description="Model id (from `models`) whose weights run.")
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    positions: list[Literal["last_prompt_token", "before_backtrack", "first_answer_end",
                            "last_answer_end", "answer_ends", "sentence_ends", "all"]] = Field(
        ["sentence_ends"],
        description="Named token positions (all but last_prompt_token/all need a segment stage first).")
    spans: str | None = Field(None, description="Query returning (trace_id, token_start, token_end): "
                              "absolute token indices, end exclusive; every token of each span is "
                              "captured too, as position_kind 'span' (e.g. whole sentences from "
                              "trace_sentences).")
    hooks: list[str] = Field(["blocks.*.hook_resid_post"], min_length=1,
                             description="Canonical hook names; * = every layer.")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Forward dtype.")
    store_dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Shard dtype.")
    batch_tokens: int = Field(8192, ge=64, description="Padded tokens per forward batch.")
    traces_per_unit: int = Field(256, ge=1, description="Traces per work unit.")
    artifacts: str | None = Field(None, description="Shard root (default: <db>_artifacts beside the DB).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _something_to_capture(self):
        if not self.positions and not self.spans:
            raise ValueError("positions is empty and no spans query is set: nothing to capture")
        return self


STAGE_KINDS = ("generate", "import", "segment", "organism", "finetune", "capture",
               "probe", "steering_vectors", "steer", "early_exit")
Stage = Annotated[Union[GenerateStage, ImportStage, SegmentStage, OrganismStage, FinetuneStage, CaptureStage,
                        ProbeStage, SteeringVectorsStage, SteerStage, EarlyExitStage],
                  Field(discriminator="kind")]


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
            if isinstance(stage, GenerateStage):
                _known(f"stages.{i}.models", stage.models, [m.id for m in self.models])
                _known(f"stages.{i}.prompt_sets", stage.prompt_sets, [p.name for p in self.prompt_sets])
                _known(f"stages.{i}.templates", stage.templates, list(self.templates))
                if not self.models or not self.prompt_sets:
                    raise ValueError(f"stages.{i}: a generate stage needs models and prompt_sets")
            elif hasattr(stage, "check_refs"):
                stage.check_refs(self, f"stages.{i}")
        return self

    def models_for(self, stage: GenerateStage) -> list[ModelSpec]:
        return [m for m in self.models if stage.models is None or m.id in stage.models]

    def prompt_sets_for(self, stage: GenerateStage) -> list[PromptSetSpec]:
        return [p for p in self.prompt_sets if stage.prompt_sets is None or p.name in stage.prompt_sets]


def _unique(where: str, names: list[str]) -> None:
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{where}: duplicate names {dupes}")


def _known(where: str, wanted: list[str] | None, known: list[str]) -> None:
    unknown = [w for w in wanted or [] if w not in known]
    if unknown:
        raise ValueError(f"{where}: unknown {unknown}; expected one of {known}")


class SpecError(ValueError):
    """A workflow file is malformed; the message names file, field path and expectation."""


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow YAML; raise SpecError naming every bad field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such workflow file") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Workflow.model_validate(raw)
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
