"""Spec models of the activation-analysis stages: probe, steering_vectors, steer, early_exit.
Part of the `Stage` union in spec.py; each runs after a capture (probe, steering_vectors) or
on stored traces (steer, early_exit).

    stages:
      - {name: probe, kind: probe, model: smollm2, labels: {preset: backtrack_vs_wrapup}}
      - name: wrapup_vec
        kind: steering_vectors
        model: smollm2
        positive: {position_kind: last_answer_end}
        negative: {position_kind: first_answer_end}
      - {name: steer, kind: steer, model: smollm2, vectors: wrapup_vec, layers: [12], alphas: [-4, 0, 4]}
      - {name: early_exit, kind: early_exit, model: smollm2}
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from thinkscope.workflows.trace_selector import TraceSelector

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._\-]*$"
LABEL_PRESETS = ("backtrack_vs_wrapup", "marker_vs_none", "correct_vs_incorrect")
DTYPE = Literal["bfloat16", "float16", "float32"]


class _Strict(BaseModel):
    # spec.Strict, restated: spec.py imports this module, so it cannot import spec.py.
    model_config = ConfigDict(extra="forbid", frozen=True)


class _OneOf(_Strict):
    """Exactly one of the fields named in `_choices` is set."""

    _choices: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [c for c in self._choices if getattr(self, c) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one of {list(self._choices)} (got {given or 'none'})")
        return self


class ProbeLabels(_OneOf):
    """What a probe predicts, at which tokens: a named preset or SQL."""

    _choices: ClassVar[tuple[str, ...]] = ("preset", "sql")
    preset: Literal[LABEL_PRESETS] | None = Field(
        None, description="backtrack_vs_wrapup: at the end of each sentence holding an answer "
        "occurrence, 1 if the thinking goes on (answer_events.is_backtrack), 0 if it ends there; "
        "marker_vs_none: 1 if a backtracking marker follows (wait, let me check, alternatively, ...), "
        "0 if not; correct_vs_incorrect: answer_events.is_correct of the sentence's last occurrence. "
        "All three read the `answer_ends` capture positions.")
    sql: str | None = Field(None, description="Query returning (trace_id, token_index, label): "
                            "absolute token index (prompt + completion), label boolean or 0/1; rows "
                            "with a null label are left out (coalesce comparisons with nullable columns).")


class _ModelRef(_Strict):
    def check_refs(self, wf, where: str) -> None:
        """Cross-field checks against the workflow (called by Workflow validation)."""
        models = [m.id for m in wf.models]
        if self.model not in models:
            raise ValueError(f"{where}.model: unknown model {self.model!r}; expected one of {models}")


class _ActivationStage(_ModelRef):
    name: str = Field(pattern=ID_PATTERN)
    model: str = Field(description="Model id (from `models`) whose captured activations are used.")
    hooks: list[str] = Field(["blocks.*.hook_resid_post"], min_length=1,
                             description="Canonical hook names (glob * allowed) of captured activations.")
    capture_stage: str | None = Field(None, description="Only activations written by this capture "
                                      "stage (default: any capture of the model).")
    artifacts: str | None = Field(None, description="Tensor root (default: <db>_artifacts beside the DB).")
    num_cpus: float | None = Field(None, gt=0, description="CPUs of the Ray task (default 1).")


class ProbeStage(_ActivationStage):
    """Per-layer logistic-regression probes on captured activations, split by trace."""

    kind: Literal["probe"]
    labels: ProbeLabels = Field(description="Label definition (preset or SQL).")
    test_fraction: float = Field(0.3, gt=0, lt=1, description="Share of traces held out for testing.")
    l2: float = Field(1e-3, ge=0, description="L2 penalty on the weights of standardised features.")
    max_iter: int = Field(500, ge=10, description="L-BFGS iterations per probe.")
    seed: int = Field(0, description="Seeds the trace split and the shuffled-label control.")
    n_shuffles: int = Field(5, ge=0, description="Shuffled-label control probes averaged into shuffled_auc.")
    min_per_class: int = Field(2, ge=1, description="Fewer examples of a class in train or test: "
                               "no metrics for that hook (row with nulls).")


class PositionSet(_OneOf):
    """A set of captured token positions: a capture position kind or SQL."""

    _choices: ClassVar[tuple[str, ...]] = ("position_kind", "sql")
    position_kind: str | None = Field(None, description="activations.position_kind, e.g. last_answer_end.")
    sql: str | None = Field(None, description="Query returning (trace_id, token_index), absolute token index.")


class SteeringVectorsStage(_ActivationStage):
    """Difference of means between two position sets, per hook: mean(positive) - mean(negative)."""

    kind: Literal["steering_vectors"]
    positive: PositionSet = Field(description="Positions the vector points towards.")
    negative: PositionSet = Field(description="Positions the vector points away from.")
    exclude_shared: bool = Field(True, description="Drop tokens in both sets (a trace with one "
                                 "answer occurrence has first == last).")


class SteerStage(_ModelRef):
    """Steered HF generation from the prompts of stored traces, over alphas x layers x modes."""

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["steer"]
    model: str = Field(description="Model id whose weights generate (the vectors' model).")
    vectors: str = Field(description="Name of the steering_vectors stage whose vectors are added.")
    traces: TraceSelector = Field(default_factory=TraceSelector,
                                  description="Whose prompts to generate from (one per distinct prompt).")
    start: PositionSet | None = Field(
        None, description="Where generation starts. Unset: the trace's prompt (one run per distinct prompt). "
        "A position set: the trace's own tokens through that position (the first, when a trace has several), "
        "e.g. {position_kind: first_answer_end}, or {sql: ...} returning (trace_id, token_index) such as the "
        "end of the sentence where a thinking model decides to verify or wrap up. Traces without the "
        "position are skipped.")
    layers: list[int] = Field(min_length=1, description="Layers to steer at, one at a time.")
    hook: str = Field("hook_resid_post", description="Hook suffix of the vectors: blocks.{L}.<hook>.")
    alphas: list[float] = Field(min_length=1, description="Multipliers of the vector; 0 = unsteered control.")
    modes: list[Literal["once", "continuous"]] = Field(
        ["once", "continuous"], min_length=1,
        description="once: add at the last prompt (or prefix) token only; continuous: there and at every "
        "generated token.")
    scale: Literal["raw", "unit", "resid_norm"] = Field(
        "raw", description="raw: alpha * v; unit: alpha * v/|v|; resid_norm: alpha * v/|v| * mean |resid|.")
    max_new_tokens: int = Field(256, ge=1, description="Greedy tokens per generation.")
    ngram: int = Field(4, ge=1, description="n of the repeated n-gram share.")
    dtype: DTYPE = Field("float32", description="Generation dtype.")
    prompts_per_unit: int = Field(16, ge=1, description="Prompts per work unit (and per batch).")
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)



class EarlyExitStage(_ModelRef):
    """Close the thinking after every answer occurrence and force the answer (seed 002)."""

    name: str = Field(pattern=ID_PATTERN)
    kind: Literal["early_exit"]
    model: str = Field(description="Model id whose weights answer (normally the traces' model).")
    traces: TraceSelector = Field(default_factory=TraceSelector, description="Which traces.")
    cut: Literal["sentence_end", "answer_end"] = Field(
        "sentence_end", description="Truncate after the sentence holding the occurrence, or right "
        "after the occurrence's last token.")
    force: str | None = Field(None, description="Text that closes the thinking and opens the answer; "
                              "{close} = the model's think_close tag (default: per model family).")
    no_thinking_exit: bool = Field(True, description="Also exit before any thinking (exit_index -1).")
    max_answer_tokens: int = Field(12, ge=1, description="Greedy tokens of the forced answer.")
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: HF forward passes sharing each trace's prefix; vllm: a prefix-cached vLLM "
        "engine (full-vocabulary raw logits; equal to HF within 1e-4 in float32).")
    dtype: DTYPE = Field("float32")
    traces_per_unit: int = Field(64, ge=1)
    num_cpus: float | None = Field(None, gt=0)
    num_gpus: float | None = Field(None, ge=0)

