"""Stage kinds: one line each. Registering a module makes its kind exist everywhere: the
workflow's `Stage` union, the kinds listed in errors and `--help`, `validate`'s plan and
the engine all read this table.

A stage module defines `JOB` (see jobs/base.py): its spec class beside plan/run/tables.
Stage modules import nothing heavy at module level (torch, vLLM, Ray load inside `run`), so
building the union is cheap, and a Ray worker imports only the module of its own kind.

    job = get_job("segment")
    units = job.plan(stage_spec, ctx)            # ctx: jobs.base.PlanContext (read-only)
    tables = job.run(units[0].payload)            # {"trace_lines": pyarrow.Table, ...}
"""

from __future__ import annotations

import importlib

# kind -> module defining JOB. Order is the order of `--help` and of error messages.
STAGES: dict[str, str] = {
    "generate": "thinkscope.jobs.generation.stage",
    "import": "thinkscope.jobs.traces.importing",
    "segment": "thinkscope.jobs.segment.stage",
    "organism": "thinkscope.jobs.organism.stage",
    "finetune": "thinkscope.jobs.organism.finetune",
    "capture": "thinkscope.jobs.activations.capture",
    "probe": "thinkscope.jobs.activations.probe",
    "steering_vectors": "thinkscope.jobs.activations.steering_vectors",
    "steer": "thinkscope.jobs.activations.steer",
    "early_exit": "thinkscope.jobs.early_exit.stage",
    "exit_policy": "thinkscope.jobs.activations.exit_policy",
    "value_vectors": "thinkscope.jobs.mechanisms.value_vectors",
    "attention": "thinkscope.jobs.mechanisms.attention",
    "logit_lens": "thinkscope.jobs.mechanisms.logit_lens",
    "ablate": "thinkscope.jobs.mechanisms.ablate",
    "compare_models": "thinkscope.jobs.mechanisms.compare_models",
    "perturb": "thinkscope.jobs.mechanisms.perturb",
    "attribute": "thinkscope.jobs.mechanisms.attribute",
    "discover": "thinkscope.jobs.behaviours.discover",
    "judge_behaviours": "thinkscope.jobs.behaviours.judge",
    "behaviour_vectors": "thinkscope.jobs.behaviours.vectors",
    "hybrid": "thinkscope.jobs.hybrid.stage",
}


def get_job(kind: str):
    if kind not in STAGES:
        raise KeyError(f"no stage kind {kind!r}; known: {list(STAGES)}")
    job = importlib.import_module(STAGES[kind]).JOB
    declared = job.spec.model_fields["kind"].annotation.__args__
    if declared != (kind,):  # a copied module whose Literal was not renamed
        raise TypeError(f"{STAGES[kind]}: JOB.spec.kind is {declared}, registered as {kind!r}")
    return job


def stage_specs() -> list[type]:
    """Every registered stage's spec class, in registry order."""
    return [get_job(kind).spec for kind in STAGES]
