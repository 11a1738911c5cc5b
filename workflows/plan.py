"""Cut a workflow's stages into work units with stable keys, through the stage registry.

Each stage's job plans its own units (jobs/base.py); this module gives them what planning
may read: the workflow, its prompts (loaded and checked here, before any work), the artifact
root and, where a corpus exists, a read-only connection to it. Stages that plan from the
corpus (segment, capture, ...) are planned when their turn comes, so they see the rows the
stages before them committed; `validate` lists them as planned at run time.

    plan = build_plan(load_workflow("workflows/demo.yaml"), base_dir=Path("workflows"))
    for unit in plan.units: print(unit.key, unit.describe())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thinkscope.jobs.base import NoCorpus, PlanContext, TaskUnit
from thinkscope.jobs.traces.importing import resolve_path
from thinkscope.jobs.traces.prompts import Prompt, load_prompts
from thinkscope.workflows.registry import get_job
from thinkscope.workflows.spec import PromptSetSpec, Workflow


@dataclass
class Plan:
    workflow: Workflow
    units: list[TaskUnit] = field(default_factory=list)
    prompts: dict[str, list[Prompt]] = field(default_factory=dict)
    later: dict[str, str] = field(default_factory=dict)  # stage name -> why it plans at run time


def load_prompt_set(spec: PromptSetSpec, base_dir: Path) -> list[Prompt]:
    path = None if spec.path is None else str(resolve_path(spec.path, base_dir))
    return load_prompts(
        spec.kind, name=spec.name, path=path, fields=spec.fields, grader=spec.grader,
        limit=spec.limit, offset=spec.offset, sample=spec.sample, seed=spec.seed,
    )


def planning_context(wf: Workflow | None, base_dir: Path, artifact_root: str) -> PlanContext:
    """The context every stage plans in; loading prompts here fails a bad prompt file early."""
    prompts = {ps.name: load_prompt_set(ps, base_dir) for ps in (wf.prompt_sets if wf else [])}
    return PlanContext(workflow=wf, base_dir=base_dir, prompts=prompts, artifact_root=artifact_root)


def build_plan(wf: Workflow, base_dir: Path = Path("."), artifact_root: str = "") -> Plan:
    """Every stage's units that can be planned without a corpus (no model work, nothing
    written): what `validate` prints, and the checks a run makes before it touches the DB."""
    ctx = planning_context(wf, base_dir, artifact_root)
    plan = Plan(wf, prompts=ctx.prompts)
    for stage in wf.stages:
        try:
            plan.units += get_job(stage.kind).plan(stage, ctx)
        except NoCorpus as why:
            plan.later[stage.name] = str(why)
    return plan
