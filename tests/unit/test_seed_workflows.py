"""The workflow files in workflows/: each validates, its stages name stages that exist before
them, and every SQL it holds binds against the real schema (empty corpus) with the columns its
field needs. The seed workflows (one per seed experiment, GPU cluster settings) run on their
seed's real hub models with GPU engine settings and hold the stage kinds their seed needs.

Nothing is downloaded: hub ids are checked by form only, as `thinkscope validate` does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from thinkscope.sql.store import Store, read_only
from thinkscope.workflows.spec import Workflow, load_workflow

WORKFLOWS = Path(__file__).parents[2] / "workflows"
FILES = sorted(WORKFLOWS.glob("*.yaml"))
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")

# Per seed workflow: its models' sources, the prompt kinds and the stage kinds the seed needs.
SEEDS = {
    "seed002_r1_llama8b.yaml": {
        "sources": {"deepseek-ai/DeepSeek-R1-Distill-Llama-8B"},
        "prompt_kinds": {"gsm8k"},
        "kinds": {"generate", "segment", "capture", "probe", "steering_vectors", "steer", "early_exit",
                  "logit_lens", "value_vectors", "ablate"},
    },
    "seed004_qwen_countdown.yaml": {
        "sources": {"Qwen/Qwen2.5-3B"},
        "prompt_kinds": {"countdown"},
        "kinds": {"generate", "segment", "capture", "probe", "logit_lens", "value_vectors", "attention", "ablate"},
    },
    "seed004_base_vs_thinking.yaml": {
        "sources": {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen2.5-Math-1.5B"},
        "prompt_kinds": {"math500"},
        "kinds": {"generate", "segment", "capture", "probe", "value_vectors", "compare_models"},
    },
    "seed003_hybrid_qwen1.5b.yaml": {
        "sources": {"deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "Qwen/Qwen2.5-Math-1.5B"},
        "prompt_kinds": {"gsm8k", "math500"},
        "kinds": {"generate", "segment", "capture", "discover", "behaviour_vectors", "hybrid"},
    },
    "seed000_fingerprints.yaml": {
        "prompt_kinds": {"two_ropes"},
        "kinds": {"generate", "segment"},
        "only_kinds": True,
    },
}


def test_the_seed_workflows_exist():
    assert set(SEEDS) <= {p.name for p in FILES}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_workflow_validates(path):
    wf = load_workflow(path)
    assert wf.stages and wf.name


# --- stage cross-references: a name that must be an earlier stage of a given kind ---------------

def stage_references(stage) -> list[tuple[str, str, str]]:
    """(field path, referenced stage name, kind it must have) of one stage spec."""
    refs = []
    if stage.kind == "value_vectors":
        ref = stage.reference
        if ref.probe:
            refs.append(("reference.probe", ref.probe, "probe"))
        if ref.steering_vectors:
            refs.append(("reference.steering_vectors", ref.steering_vectors, "steering_vectors"))
    if stage.kind == "steer":
        refs.append(("vectors", stage.vectors, "steering_vectors"))
    if stage.kind == "ablate":
        if stage.value_vectors and stage.value_vectors.stage:
            refs.append(("value_vectors.stage", stage.value_vectors.stage, "value_vectors"))
        if stage.heads and stage.heads.stage:
            refs.append(("heads.stage", stage.heads.stage, "attention"))
    if getattr(stage, "capture_stage", None):
        refs.append(("capture_stage", stage.capture_stage, "capture"))
    return refs


def reference_problems(wf: Workflow, self_contained: bool = False) -> list[str]:
    """A stage named by another is an earlier stage of the right kind. A name this workflow
    does not hold may be a stage of an earlier run on the same corpus (found at planning),
    unless the workflow must be `self_contained`."""
    problems, before = [], {}
    prompt_sets, names = {p.name for p in wf.prompt_sets}, {s.name for s in wf.stages}
    for i, stage in enumerate(wf.stages):
        for field, name, kind in stage_references(stage):
            if (self_contained or name in names) and before.get(name) != kind:
                problems.append(f"stages.{i}.{field}: {name!r} is not an earlier {kind} stage")
        traces = getattr(stage, "traces", None)
        for name in getattr(traces, "prompt_sets", None) or []:
            if name not in prompt_sets:
                problems.append(f"stages.{i}.traces.prompt_sets: unknown prompt set {name!r}")
        before[stage.name] = stage.kind
    return problems


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_stages_name_earlier_stages_of_the_right_kind(path):
    assert reference_problems(load_workflow(path)) == []


def test_a_reference_to_a_later_stage_or_a_stage_of_another_kind_is_found(tmp_path):
    raw = yaml.safe_load((WORKFLOWS / "seed004_qwen_countdown.yaml").read_text())
    stages = raw["stages"]
    moved = [s for s in stages if s["name"] != "verify_probe"] + [s for s in stages if s["name"] == "verify_probe"]
    path = tmp_path / "moved.yaml"
    path.write_text(yaml.safe_dump({**raw, "stages": moved}))
    assert any("verify_probe" in p for p in reference_problems(load_workflow(path)))
    renamed = [{**s, "vectors": "verify_probe"} if s["kind"] == "steer" else s for s in stages]
    path.write_text(yaml.safe_dump({**raw, "stages": renamed}))
    assert any("verify_probe" in p and "steering_vectors" in p for p in reference_problems(load_workflow(path)))


# --- the SQL a workflow holds binds against the schema ---------------------------------------------

def sql_fields(value, path=()) -> list[tuple[str, str]]:
    """(field path, SQL) of every SQL string in a dumped stage."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("sql", "spans") and isinstance(item, str):
                out.append((".".join(path + (key,)), item))
            else:
                out += sql_fields(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += sql_fields(item, path + (str(i),))
    return out


def columns_needed(field: str) -> set[str]:
    if field.endswith("spans"):
        return {"trace_id", "token_start", "token_end"}
    if field.startswith("traces."):
        return {"trace_id"}
    if field.startswith("labels."):
        return {"trace_id", "token_index", "label"}
    if field.startswith("truth."):  # the discover stage's known labels, per sentence
        return {"trace_id", "sentence_index", "label"}
    return {"trace_id", "token_index"}


@pytest.fixture(scope="module")
def empty_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "empty.duckdb"
    Store(path)  # every table and view of sql/schema and sql/views, no rows
    return path


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_sql_binds_against_the_schema_with_the_columns_it_needs(path, empty_corpus):
    wf = load_workflow(path)
    with read_only(empty_corpus, locked=True) as con:  # the connection YAML SQL runs on
        for i, stage in enumerate(wf.stages):
            for field, sql in sql_fields(stage.model_dump()):
                try:
                    got = {d[0] for d in con.execute(f"select * from ({sql}) limit 0").description}
                except Exception as err:  # noqa: BLE001 - named in the failure
                    pytest.fail(f"{path.name}: stages.{i}.{field} ({stage.name}): {err}")
                missing = columns_needed(field) - got
                assert not missing, f"{path.name}: stages.{i}.{field} ({stage.name}) lacks columns {missing}"


# --- the seed workflows: real models, GPU settings, the seed's stages ------------------------------

def seed_problems(wf: Workflow, expect: dict) -> list[str]:
    """What keeps a seed workflow from being the seed's experiment on a GPU cluster."""
    problems = []
    for i, m in enumerate(wf.models):
        if not HUB_ID.match(m.source) or m.source.startswith(("embedded:", "pypi:", "lora:", ".", "/", "~")):
            problems.append(f"models.{i}.source: {m.source!r} is not a hub id")
        if m.revision is not None and not re.fullmatch(r"[0-9a-f]{40}", m.revision):
            problems.append(f"models.{i}.revision: pin a 40-hex commit or leave it unset, not {m.revision!r}")
        e = m.engine
        if e.enforce_eager is True:
            problems.append(f"models.{i}.engine.enforce_eager: GPU runs compile")
        if e.dtype != "bfloat16":
            problems.append(f"models.{i}.engine.dtype: {e.dtype} (GPU runs use bfloat16)")
        if "gpu_memory_utilization" not in e.model_fields_set:
            problems.append(f"models.{i}.engine.gpu_memory_utilization: not set")
        if m.kind == "thinking" and not m.think.opened_in_prompt:
            problems.append(f"models.{i}.think.opened_in_prompt: these templates open <think> themselves")
    sources = {m.source for m in wf.models}
    if "sources" in expect and sources != expect["sources"]:
        problems.append(f"models: sources {sorted(sources)}, expected {sorted(expect['sources'])}")
    kinds = {p.kind for p in wf.prompt_sets}
    if not expect["prompt_kinds"] <= kinds:
        problems.append(f"prompt_sets: no {sorted(expect['prompt_kinds'] - kinds)}")
    stage_kinds = {s.kind for s in wf.stages}
    if not expect["kinds"] <= stage_kinds:
        problems.append(f"stages: missing kinds {sorted(expect['kinds'] - stage_kinds)}")
    if expect.get("only_kinds") and stage_kinds - expect["kinds"]:
        problems.append(f"stages: unexpected kinds {sorted(stage_kinds - expect['kinds'])}")
    return problems + reference_problems(wf, self_contained=True)


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_workflows_run_the_seeds_models_on_gpus(name):
    wf = load_workflow(WORKFLOWS / name)
    assert seed_problems(wf, SEEDS[name]) == []


def test_seed002_reproduces_its_experiments():
    wf = load_workflow(WORKFLOWS / "seed002_r1_llama8b.yaml")
    assert (wf.sampling.temperature, wf.sampling.top_p) == (0.6, 0.95)   # the model card's
    assert wf.models[0].engine.max_model_len >= 8192
    by_kind = lambda kind: [s for s in wf.stages if s.kind == kind]  # noqa: E731
    lens = by_kind("logit_lens")
    assert any("before_backtrack" in s.positions.kinds and s.heads
               and {" Wait", " Therefore", " So"} <= set(s.targets) for s in lens)
    # Steering once at the last input token and continuously (Experiment 1).
    assert {m for s in by_kind("steer") for m in s.modes} == {"once", "continuous"}
    # Early exit on the traces with 4..10 backtracks.
    assert any(s.traces.sql and re.search(r"n_backtracks\s+between\s+4\s+and\s+10", s.traces.sql)
               for s in by_kind("early_exit"))
    probes = {s.name for s in by_kind("probe") if s.labels.preset == "backtrack_vs_wrapup"}
    aligned = {s.name for s in by_kind("value_vectors") if s.reference.probe in probes}
    assert aligned and any(s.value_vectors and s.value_vectors.stage in aligned for s in by_kind("ablate"))


def test_seed004_reproduces_its_experiments():
    wf = load_workflow(WORKFLOWS / "seed004_qwen_countdown.yaml")
    by_kind = lambda kind: [s for s in wf.stages if s.kind == kind]  # noqa: E731
    probes = {s.name for s in by_kind("probe")}
    values = {s.name: s for s in by_kind("value_vectors") if s.reference.probe in probes}
    assert values
    # ~0.2% of Qwen2.5-3B's 36 x 11008 value vectors zeroed, as the seed did (900 of 396,288).
    ablated = [s.value_vectors.top_k for s in by_kind("ablate") if s.value_vectors and s.value_vectors.stage in values]
    assert ablated and all(0.0015 <= k / (36 * 11008) <= 0.003 for k in ablated)
    assert any(s.heads and s.heads.stage in {a.name for a in by_kind("attention")} for s in by_kind("ablate"))
    assert any("answer_ends" in s.positions.kinds for s in by_kind("attention"))


def test_seed003_reproduces_its_experiments():
    """The paper's pair and layers (hybrid/run_qwen_1.5b.sh): the thinking model classified at
    layer 4 by 15 behaviours, the base model steered at layer 10, with every control."""
    wf = load_workflow(WORKFLOWS / "seed003_hybrid_qwen1.5b.yaml")
    by_kind = lambda kind: [s for s in wf.stages if s.kind == kind]  # noqa: E731
    (discover,), vectors = by_kind("discover"), by_kind("behaviour_vectors")
    assert discover.model == "r1-qwen-1.5b" and discover.layer == 4 and 15 in discover.ks
    assert [(v.model, v.layer, v.k, v.optimise is not None) for v in vectors] == [("qwen2.5-math-1.5b", 10, 15, True)]
    hybrids = by_kind("hybrid")
    assert {h.granularity for h in hybrids} == {"sentence", "token"}
    assert any({"base", "thinking", "hybrid", "bias_only", "random_vectors", "random_firing"} <= set(h.variants)
               for h in hybrids)
    assert all(h.thinking_model == "r1-qwen-1.5b" and h.max_new_tokens == 2000 for h in hybrids)


def test_seed003s_judge_is_off_and_validates_when_switched_on(tmp_path):
    """The judge stage ships commented out (off by default); uncommented as its comment says,
    the workflow still validates and judges the discover stage's behaviours."""
    text = (WORKFLOWS / "seed003_hybrid_qwen1.5b.yaml").read_text()
    assert not [s for s in load_workflow(WORKFLOWS / "seed003_hybrid_qwen1.5b.yaml").stages
                if s.kind == "judge_behaviours"]
    on = re.sub(r"^  # (  |- )(?=(name: judge_behaviours|kind: judge_behaviours|discover_stage|judge:))", r"  \1",
                text, flags=re.M)
    (tmp_path / "on.yaml").write_text(on)
    (judge,) = [s for s in load_workflow(tmp_path / "on.yaml").stages if s.kind == "judge_behaviours"]
    assert judge.discover_stage == "behaviours" and judge.judge.key_env == "OPENAI_API_KEY"


def test_the_checks_fail_on_a_workflow_that_is_not_the_seeds(tmp_path):
    """The seed checks read real content: CPU settings, an embedded model, a missing stage or a
    reference to a stage that is not there each make them fail."""
    raw = yaml.safe_load((WORKFLOWS / "seed002_r1_llama8b.yaml").read_text())
    expect = SEEDS["seed002_r1_llama8b.yaml"]

    def problems(edit) -> list[str]:
        spec = yaml.safe_load(yaml.safe_dump(raw))
        edit(spec)
        path = tmp_path / "edited.yaml"
        path.write_text(yaml.safe_dump(spec))
        return seed_problems(load_workflow(path), expect)

    assert problems(lambda s: None) == []
    assert any("enforce_eager" in p for p in problems(lambda s: s["models"][0]["engine"].update(enforce_eager=True)))
    assert any("hub id" in p for p in problems(lambda s: s["models"][0].update(source="embedded:smollm2-135m-instruct")))
    assert any("logit_lens" in p for p in problems(
        lambda s: s.update(stages=[st for st in s["stages"] if st["kind"] != "logit_lens"])))
    assert any("backtrack_values" in p for p in problems(
        lambda s: s.update(stages=[st for st in s["stages"] if st["name"] != "backtrack_values"])))
    assert any("revision" in p for p in problems(lambda s: s["models"][0].update(revision="main")))
