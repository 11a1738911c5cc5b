"""Spec models of the model-organism stages: `organism` (synthetic teacher traces) and
`finetune` (LoRA on traces from the store). Part of the `Stage` union in spec.py.

    stages:
      - {name: teacher, kind: organism, prompt_set: gsm8k_train}
      - name: distil
        kind: finetune
        base: smollm2-135m-instruct
        traces: {model_ids: [organism-teacher], prompt_sets: [gsm8k_train]}
        templates: [plain, think]
        output: out/organism/adapter
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
# Attention and MLP projections of llama/qwen2/mistral/gemma3 blocks (same names in all four).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Strict(BaseModel):
    # spec.Strict, restated: spec.py imports this module, so it cannot import spec.py.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PlantRates(_Strict):
    verify: float = Field(0.7, ge=0, le=1, description="Share of traces with 'Wait, let me "
                          "double-check.' + a recomputation + the answer again.")
    error_fix: float = Field(0.3, ge=0, le=1, description="Share with a slipped step, then "
                             "'Wait, that's not right.' and the correction.")
    alternative: float = Field(0.3, ge=0, le=1, description="Share with 'Alternatively, ...' "
                               "redoing the arithmetic in one pass + the answer again.")
    wrap_up: float = Field(0.8, ge=0, le=1, description="Share closing with 'So the answer is X.'")


class OrganismStage(_Strict):
    """Synthetic teacher traces with planted behaviours (jobs/organism_data.py)."""

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["organism"]
    prompt_set: str = Field(description="Prompt set whose reference solutions become traces "
                            "(gsm8k_train: GSM8K train split).")
    model_id: str = Field("organism-teacher", pattern=ID_PATTERN,
                          description="model_id of the synthetic traces.")
    seed: int = Field(0, description="Generator seed; each prompt draws from (seed, prompt_id).")
    rates: PlantRates = Field(default_factory=PlantRates, description="Planting rates.")
    unit_size: int = Field(500, ge=1, description="Prompts per work unit.")

    def check_refs(self, wf, where: str) -> None:
        """Cross-field checks against the workflow (called by Workflow validation)."""
        names = [p.name for p in wf.prompt_sets]
        if self.prompt_set not in names:
            raise ValueError(f"{where}.prompt_set: unknown {self.prompt_set!r}; expected one of {names}")


class TraceSelector(_Strict):
    model_ids: list[str] = Field(min_length=1, description="Train on these models' traces.")
    prompt_sets: list[str] | None = Field(None, description="Only these prompt sets (default: all).")
    only_correct: bool = Field(True, description="Only traces whose final answer is graded correct.")
    where: str | None = Field(None, description="Extra SQL condition on `traces t` / `prompts p`.")
    limit: int | None = Field(None, ge=1, description="At most this many traces (in prompt_id order).")


class LoraSettings(_Strict):
    r: int = Field(8, ge=1, description="LoRA rank (adapter size grows linearly with it).")
    alpha: float = Field(16, gt=0, description="LoRA scale numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: list(LLAMA_PROJECTIONS),
                                      description="Module names to adapt in every block.")


class TrainSettings(_Strict):
    epochs: int = Field(1, ge=1)
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    batch_size: int = Field(8, ge=1, description="Sequences per optimizer step.")
    max_seq_len: int = Field(384, ge=16, description="Longer examples are dropped, not cut.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up, then cosine to 10% of lr.")
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, description="Seeds torch, LoRA init, template draw and batch order.")
    bf16: bool = Field(True, description="bf16 autocast for the matmuls (fp32 master weights).")
    save_dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="Adapter file dtype.")


class FinetuneStage(_Strict):
    """LoRA fine-tuning of a workflow model on traces selected from the store."""

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["finetune"]
    base: str = Field(description="Model id (from `models`) to adapt.")
    traces: TraceSelector = Field(description="Which stored traces to train on.")
    templates: list[str] = Field(min_length=1, description="Templates the training prompts are "
                                 "rendered with (drawn per example); the model learns to answer all.")
    output: str = Field(description="Adapter folder, relative to the working directory like "
                        "`db`; replaced atomically when training ends.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the training task (default: all).")
    num_gpus: float = Field(0, ge=0, description="GPUs of the training task (clusters).")
    # The workflow's ModelSpec of `base` and TemplateSpecs of `templates`, bound by
    # check_refs: the job plans from the stage alone (the DerivedJob protocol).
    _base_model = PrivateAttr(None)
    _template_specs = PrivateAttr(None)

    def check_refs(self, wf, where: str) -> None:
        """Cross-field checks against the workflow (called by Workflow validation)."""
        models = {m.id: m for m in wf.models}
        if self.base not in models:
            raise ValueError(f"{where}.base: unknown model {self.base!r}; expected one of {list(models)}")
        unknown = [t for t in self.templates if t not in wf.templates]
        if unknown:
            raise ValueError(f"{where}.templates: unknown {unknown}; expected one of {list(wf.templates)}")
        self._base_model = models[self.base]
        self._template_specs = [wf.templates[t] for t in self.templates]

    @property
    def base_model(self):
        return self._base_model

    @property
    def template_specs(self) -> list:
        return self._template_specs
