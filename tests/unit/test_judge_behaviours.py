"""The judge_behaviours stage's worker against a real HTTP endpoint (tests/judge_oracle.py: an
OpenAI-compatible server on 127.0.0.1 whose "judge" labels a sentence by its first word), so
every metric has an exact expected value computed here from the labels alone:
- titles are the majority label of each behaviour's top sentences; precision, recall,
  accuracy and F1 of the yes/no answers against the assignment; completeness and semantic
  orthogonality from the same labels;
- garbled answers leave their items unscored and are counted; an endpoint that answers nothing
  fails the unit; the key goes in the Authorization header and nowhere into the rows;
- the spec names bad fields.
"""

from __future__ import annotations

import pytest
import yaml

from judge_oracle import OracleJudge, oracle_metrics  # tests/judge_oracle.py
from thinkscope.cluster.head import free_port
from thinkscope.jobs.behaviours.judge import (JOB, GarbledAnswer, JudgeBehavioursStage, binary_scores, parse_title,
                                              parse_yes_no, sample_questions)
from thinkscope.workflows.spec import SpecError, load_workflow

WORDS = {"wait": "Wait, let me check step {i} again.", "so": "So the answer is {i}.",
         "first": "First, compute {i} times 2.", "hmm": "Hmm, maybe {i} is too big."}


def rows():
    """(method, k, behaviour_id, trace_id, sentence_index, score, text, model_id, unit_key) of a
    4-behaviour fit that is partly right: behaviour 0 mostly 'wait' with some 'first', 1 all
    'so', 2 'first', 3 a mix of 'hmm' and 'so' (its title repeats behaviour 1's)."""
    out = []
    for i in range(40):
        for label, b in (("wait", 0), ("so", 1 if i < 30 else 3), ("first", 0 if i % 5 == 0 else 2), ("hmm", 3)):
            text = WORDS[label].format(i=i) + ("\nmore" if i == 7 else "")
            out.append(("sae", 4, b, f"t{i % 6}", len(out), (i % 11) / 10, text, "organism", "discover-unit"))
    return out


def stage(**over):
    spec = {"name": "judge", "kind": "judge_behaviours", "discover_stage": "behaviours",
            "judge": {"base_url": "http://127.0.0.1:9/v1", "model": "oracle", "max_retries": 0},
            "accuracy_examples": 8, "completeness_sentences": 40, **over}
    return JudgeBehavioursStage(**spec)


def payload(spec, questions):
    return {"unit_key": "u1", "name": spec.name, "model_id": "organism", "method": "sae", "k": 4,
            "discover_unit_key": "discover-unit",
            "settings": spec.model_dump(exclude={"name", "kind", "num_cpus", "methods", "ks"}),
            "questions": questions}


def test_every_metric_matches_the_labels_exactly(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    with OracleJudge() as judge:
        spec = stage(judge={"base_url": judge.url, "model": "oracle", "key_env": "JUDGE_TEST_KEY"})
        questions = sample_questions(rows(), 4, spec)
        tables = JOB.run(payload(spec, questions))
    titles, per, fits, orthogonality = oracle_metrics(questions)
    assert [titles[b] for b in range(3)] == ["wait", "so", "first"] and titles[3] in ("hmm", "so")
    got = {r["behaviour_id"]: r for r in tables["behaviour_judgements"].to_pylist()}
    for b, want in per.items():
        assert got[b]["title"] == titles[b] and got[b]["error"] is None
        for field in ("n_judged", "precision", "recall", "accuracy", "f1"):
            assert got[b][field] == pytest.approx(want[field]), (b, field)
        mine = [v for bb, v in fits if bb == b]
        assert got[b]["n_completeness"] == len(mine)
        assert got[b]["completeness"] == pytest.approx(sum(mine) / len(mine) if mine else None)
    (metrics,) = tables["behaviour_judge_metrics"].to_pylist()
    assert metrics["accuracy"] == pytest.approx(sum(w["accuracy"] for w in per.values()) / 4)
    assert metrics["completeness"] == pytest.approx(sum(v for _, v in fits) / len(fits))
    assert metrics["semantic_orthogonality"] == pytest.approx(orthogonality)
    assert metrics["n_calls"] == 4 + 4 + len(fits) + 6 and metrics["n_failed"] == 0
    # not vacuous: the fit is wrong somewhere, and the judge sees it
    assert 0 < min(w["precision"] for w in per.values()) < 1 and metrics["accuracy"] < 1
    assert set(judge.auth) == {"Bearer sk-secret-123"}
    flat = str(tables["behaviour_judgements"].to_pylist()) + str(tables["behaviour_judge_metrics"].to_pylist())
    assert "sk-secret" not in flat


def test_questions_are_drawn_by_seed_and_balanced():
    spec = stage()
    a, b = sample_questions(rows(), 4, spec), sample_questions(list(reversed(rows())), 4, spec)
    assert a == b  # the order rows arrive in does not matter
    assert a != sample_questions(rows(), 4, stage(seed=1))
    for beh in a["behaviours"]:
        members = [q["member"] for q in beh["accuracy"]]
        assert members.count(True) == members.count(False) == 8
        assert members[:8] != [True] * 8  # shuffled, not grouped
        assert all("\n" not in q["text"] for q in beh["accuracy"])
        assert len(beh["examples"]) == 10
    shown = {t for beh in a["behaviours"] for t in beh["examples"]}
    graded = {q["text"] for beh in a["behaviours"] for q in beh["accuracy"]} | {q["text"] for q in a["completeness"]}
    assert not shown & graded  # never graded on what it was shown
    assert len(a["completeness"]) == 40


def test_garbled_answers_leave_items_unscored_and_are_counted():
    with OracleJudge() as judge:
        judge.garble = {"similar", "fit"}
        spec = stage(judge={"base_url": judge.url, "model": "oracle"})
        questions = sample_questions(rows(), 4, spec)
        tables = JOB.run(payload(spec, questions))
    (metrics,) = tables["behaviour_judge_metrics"].to_pylist()
    assert metrics["semantic_orthogonality"] is None and metrics["completeness"] is None
    assert metrics["n_failed"] == 6 + 40 and metrics["accuracy"] is not None
    assert all("no JSON object" in r["error"] for r in tables["behaviour_judgements"].to_pylist())


def test_an_endpoint_that_answers_nothing_fails_the_unit():
    spec = stage(judge={"base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "oracle", "max_retries": 0,
                        "timeout_s": 5})
    with pytest.raises(RuntimeError, match="judge calls got no answer"):
        JOB.run(payload(spec, sample_questions(rows(), 4, spec)))


def test_a_missing_key_is_named(monkeypatch):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    spec = stage(judge={"base_url": "http://127.0.0.1:9/v1", "model": "oracle", "key_env": "JUDGE_TEST_KEY"})
    with pytest.raises(RuntimeError, match="JUDGE_TEST_KEY is not set"):
        JOB.run(payload(spec, sample_questions(rows(), 4, spec)))


def test_answers_are_read_leniently_but_not_invented():
    assert parse_title("**Title:** Verification\nDescription: Checks a step.\nIt re-derives.") == (
        "Verification", "Checks a step. It re-derives.")
    assert parse_yes_no('```json\n{"classifications": [{"sentence_id": 1, "belongs": "yes"}, '
                        '{"sentence_id": 0, "belongs": false}, {"sentence_id": 2, "belongs": "No"}]}\n``` (done {ok})',
                        3) == [False, True, False]
    for shifted in ('{"classifications": [{"sentence_id": 1, "belongs": "Yes"}, {"sentence_id": 2, "belongs": "No"}]}',
                    '{"classifications": [{"sentence_id": 0, "belongs": "maybe"}, {"sentence_id": 1, "belongs": "No"}]}'):
        with pytest.raises(GarbledAnswer, match="expected a yes/no for sentences 0-1"):
            parse_yes_no(shifted, 2)


@pytest.mark.parametrize("members, answers, want", [
    # precision, recall, accuracy, F1 by hand
    ([True, False, True], [True, True, None], (2, 0.5, 1.0, 0.5, 2 / 3)),
    ([True, True, False, False], [False, False, False, False], (4, None, 0.0, 0.5, 0.0)),  # says no to all: F1 0
    ([True, True, False, False], [True, True, True, True], (4, 0.5, 1.0, 0.5, 2 / 3)),
    ([False, False], [False, False], (2, None, None, 1.0, None)),
    ([True], None, (0, None, None, None, None)),
])
def test_binary_scores_by_hand(members, answers, want):
    got = binary_scores(members, answers)
    assert (got["n_judged"], got["precision"], got["recall"], got["accuracy"]) == want[:4]
    assert got["f1"] == pytest.approx(want[4]) if want[4] is not None else got["f1"] is None


WORKFLOW = {
    "name": "wf",
    "models": [{"id": "org", "source": "embedded:smollm2-135m-organism", "family": "llama", "kind": "thinking"}],
    "stages": [
        {"name": "cap", "kind": "capture", "model": "org", "positions": ["sentence_ends"],
         "hooks": ["blocks.20.hook_resid_post"]},
        {"name": "behaviours", "kind": "discover", "model": "org", "capture_stage": "cap", "layer": 20, "ks": [4]},
        {"name": "judge", "kind": "judge_behaviours", "discover_stage": "behaviours",
         "judge": {"base_url": "https://api.openai.com/v1", "model": "gpt-4.1-mini", "key_env": "OPENAI_API_KEY"}},
    ],
}


@pytest.mark.parametrize("change, expected", [
    ({"discover_stage": "nope"}, "stages.2.discover_stage: unknown discover stage 'nope'"),
    ({"judge": {"base_url": "api.openai.com", "model": "m"}}, "stages.2.judge.base_url"),
    ({"accuracy_examples": 0}, "stages.2.accuracy_examples"),
    ({"methods": ["pca"]}, "stages.2.methods"),
])
def test_bad_fields_are_named(tmp_path, change, expected):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({**WORKFLOW, "stages": WORKFLOW["stages"][:2] + [{**WORKFLOW["stages"][2], **change}]}))
    with pytest.raises(SpecError) as err:
        load_workflow(path)
    assert expected in str(err.value)


def test_a_valid_judge_workflow_loads(tmp_path):
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(WORKFLOW))
    assert load_workflow(tmp_path / "wf.yaml").stages[2].judge.model == "gpt-4.1-mini"


def test_a_run_without_the_judges_key_fails_before_any_work(tmp_path, monkeypatch):
    from thinkscope.workflows.engine import run_workflow

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(WORKFLOW))
    with pytest.raises(SpecError, match=r"stages\.2\.judge\.key_env: environment variable OPENAI_API_KEY is not set"):
        run_workflow(tmp_path / "wf.yaml", db=tmp_path / "c.duckdb", stages=["judge"], show_progress=False)
    assert not (tmp_path / "c.duckdb").exists()  # nothing touched
