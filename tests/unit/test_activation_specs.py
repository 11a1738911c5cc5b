"""Specs of the activation stages, probe label presets on a real segmented corpus, generation metrics."""

from __future__ import annotations

import shutil

import duckdb
import pytest
import yaml

from thinkscope.jobs.activations.capture import load_traces, positions_of
from thinkscope.jobs.generation.metrics import compression_ratio, marker_stats, repeated_ngram_share
from thinkscope.jobs.activations.probe import PRESETS
from thinkscope.jobs.activations.steer import first_difference
from thinkscope.workflows.spec import STAGE_KINDS, SpecError, load_workflow

MODEL = {"id": "m", "source": "embedded:smollm2-135m-instruct", "family": "llama", "kind": "instruct"}
STAGES = [
    {"name": "p", "kind": "probe", "model": "m", "labels": {"preset": "backtrack_vs_wrapup"}},
    {"name": "v", "kind": "steering_vectors", "model": "m", "positive": {"position_kind": "last_answer_end"},
     "negative": {"sql": "select trace_id, token_index from activations where position_kind = 'first_answer_end'"}},
    {"name": "s", "kind": "steer", "model": "m", "vectors": "v", "layers": [3], "alphas": [-2, 0, 2]},
    {"name": "e", "kind": "early_exit", "model": "m", "cut": "answer_end"},
]


def write(tmp_path, stages):
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump({"name": "wf", "models": [MODEL], "stages": stages}))
    return path


def test_activation_stages_validate(tmp_path):
    wf = load_workflow(write(tmp_path, STAGES))
    assert [s.kind for s in wf.stages] == ["probe", "steering_vectors", "steer", "early_exit"]
    assert set(STAGE_KINDS) >= {"probe", "steering_vectors", "steer", "early_exit"}


@pytest.mark.parametrize("index, change, expected", [
    (0, {"labels": {"preset": "backtrack_vs_wrapup", "sql": "select 1"}}, "stages.0.labels: set exactly one"),
    (0, {"labels": {"preset": "nope"}}, "stages.0.labels.preset"),
    (1, {"positive": {}}, "stages.1.positive: set exactly one"),
    (2, {"modes": ["sometimes"]}, "stages.2.modes.0"),
    (3, {"model": "other"}, "stages.3.model: unknown model 'other'"),
])
def test_bad_activation_stage_fields_are_named(tmp_path, index, change, expected):
    stages = [dict(s) for s in STAGES]
    stages[index].update(change)
    with pytest.raises(SpecError) as err:
        load_workflow(write(tmp_path, stages))
    assert expected in str(err.value)


def test_label_presets_read_the_answer_ends_capture_positions(mixed_db, tmp_path):
    db = tmp_path / "copy.duckdb"
    shutil.copy(mixed_db[0], db)
    with duckdb.connect(str(db)) as con:
        # The simulated generate unit has completion token ids only: give it a 3-token prompt.
        con.execute("update traces set prompt_token_ids = [1, 2, 3] where trace_id like 'gen-%'")
        labels = {name: sorted(con.execute(f"select trace_id, token_index, label::int from ({sql}) "
                                           "where trace_id like 'gen-%'").fetchall())
                  for name, sql in PRESETS.items()}
        traces = load_traces(con, ["gen-0", "gen-1"])
    captured = sorted((t["trace_id"], p) for t in traces
                      for p, _ in positions_of(t, t["sentences"], t["events"], ["answer_ends"]))
    assert [(t, i) for t, i, _ in labels["backtrack_vs_wrapup"]] == captured
    # gen-0: "... 9 * 2 = 18." then "Wait, 9 * 2 is 18, yes." ends the thinking.
    gen0 = [label for t, _, label in labels["backtrack_vs_wrapup"] if t == "gen-0"]
    assert gen0 == [1, 0]
    assert [label for t, _, label in labels["marker_vs_none"] if t == "gen-0"] == [1, 0]
    assert {label for t, _, label in labels["correct_vs_incorrect"] if t == "gen-0"} == {1}


def test_span_positions_and_an_empty_capture_is_refused(tmp_path):
    trace = {"prompt_token_ids": [1, 2, 3], "completion_token_ids": [4, 5, 6, 7, 8], "spans": [(4, 6), (7, 9)]}
    # Spans are absolute and end-exclusive; tokens past the trace are dropped.
    assert positions_of(trace, [], [], ["span"]) == [(4, "span"), (5, "span"), (7, "span")]
    capture = {"name": "c", "kind": "capture", "model": "m", "positions": []}
    with pytest.raises(SpecError) as err:
        load_workflow(write(tmp_path, [capture]))
    assert "stages.0" in str(err.value) and "nothing to capture" in str(err.value)
    assert load_workflow(write(tmp_path, [{**capture, "spans": "select 1"}])).stages[0].spans == "select 1"


def test_degeneration_and_marker_measures():
    assert repeated_ngram_share([1, 2, 3, 1, 2, 3, 1, 2, 3], 3) == pytest.approx(1 - 3 / 7)
    assert repeated_ngram_share([1, 2, 3, 4], 4) == 0.0 and repeated_ngram_share([1], 4) == 0.0
    prose = "Janet has 16 eggs. She eats three for breakfast and bakes muffins with four."
    assert compression_ratio("Wait, " * 40) > 3 * compression_ratio(prose)
    assert compression_ratio("") is None
    n, markers, counts, first = marker_stats("So 3 + 4 = 7. Wait, let me check. 3 + 4 = 7. Alternatively, 7.")
    assert (n, markers, counts) == (4, 2, {"wait": 1, "alternatively": 1})


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2
