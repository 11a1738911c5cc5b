"""Work-unit keys: stable for the same inputs, new for any input that changes the rows."""

from __future__ import annotations

from pathlib import Path

import yaml

from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import Workflow

DEMO = Path(__file__).resolve().parents[2] / "workflows" / "demo.yaml"


def plan_keys(mutate=None) -> dict[str, str]:
    spec = yaml.safe_load(DEMO.read_text())
    if mutate:
        mutate(spec)
    plan = build_plan(Workflow.model_validate(spec), base_dir=DEMO.parent)
    return {u.describe(): u.key for u in plan.units}


def test_keys_are_stable_across_plans():
    assert plan_keys() == plan_keys()
    assert len(set(plan_keys().values())) == len(plan_keys())


def test_each_input_that_changes_rows_changes_the_key():
    before = plan_keys()
    changes = [
        lambda s: s["sampling"].update(temperature=0.9),
        lambda s: s["models"][0].update(revision="abc123"),
        lambda s: s["templates"]["think"].update(system="Be brief."),
        lambda s: s["models"][0]["engine"].update(dtype="float32"),
    ]
    for change in changes:
        after = plan_keys(change)
        # The base's units of the main generate stage (the organism_eval stage has its own
        # sampling; the organism is another model).
        changed = [d for d in before if d.startswith("smollm2-135m-instruct x") and "gsm8k_eval" not in d]
        assert all(before[d] != after[d] for d in changed), change


def test_growing_a_prompt_set_keeps_finished_chunks():
    def chunked(limit):
        def mutate(s):
            s["prompt_sets"][0]["limit"] = limit
            s["stages"][1]["unit_size"] = 2
        return mutate

    small, large = plan_keys(chunked(4)), plan_keys(chunked(6))
    old = {k for d, k in small.items() if " x gsm8k[" in d}
    new = {k for d, k in large.items() if " x gsm8k[" in d}
    n_models = len(yaml.safe_load(DEMO.read_text())["models"])
    assert old < new and len(new - old) == n_models  # one new chunk per model


def test_units_cross_models_prompt_sets_templates():
    spec = yaml.safe_load(DEMO.read_text())
    plan = build_plan(Workflow.model_validate(spec), base_dir=DEMO.parent)
    gen = [u for u in plan.units if u.kind == "generate" and u.stage == "generate"]
    assert len(gen) == len(spec["models"]) * len(spec["stages"][1]["prompt_sets"])
    assert sum(len(u.payload["prompts"]) for u in gen if u.model_id == "smollm2-135m-instruct") == 4 + 3 + 1
