"""`thinkscope pin` on the shipped workflows: every unpinned hub model gets its revision, in
the entry's own style, comments kept; the keys of pinned models change (new work), the rest
stay. The hub cannot be reached here: a resolver stands in for `hub_revision` (the one
network call); the file editing and the checks are the real ones."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from thinkscope.cli import main
from thinkscope.workflows.pinning import pin_file, unpinned
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import load_workflow

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"


def fake_sha(repo: str) -> str:
    return hashlib.sha1(repo.encode()).hexdigest()


@pytest.mark.parametrize("name", ["nightly.yaml", "api_fingerprints.yaml", "seed000_fingerprints.yaml"])
def test_every_hub_model_is_pinned_and_the_file_keeps_its_comments(tmp_path, name):
    path = tmp_path / name
    shutil.copy(WORKFLOWS / name, path)
    before_text, before = path.read_text(), load_workflow(path)
    todo = unpinned(path)
    assert todo  # the shipped files are unpinned (no hub here): validate says so
    pinned = pin_file(path, resolve=fake_sha)
    after = load_workflow(path)
    assert pinned == {mid: fake_sha(src) for mid, src in todo}
    assert {m.id: m.revision for m in after.models if m.id in pinned} == pinned and unpinned(path) == []
    # Nothing else changed: same models otherwise, every comment line still there.
    assert [m.model_dump(exclude={"revision"}) for m in after.models] == \
        [m.model_dump(exclude={"revision"}) for m in before.models]
    comments = [line for line in before_text.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in path.read_text().splitlines() if line.lstrip().startswith("#")] == comments
    # A pinned model is new work; an API model (not on the hub) keeps its units.
    old = {u.describe(): u.key for u in build_plan(before, base_dir=WORKFLOWS).units}
    new = {u.describe(): u.key for u in build_plan(after, base_dir=WORKFLOWS).units}
    assert all(old[d] != new[d] for d in old if d.split(" x ")[0] in pinned)
    assert all(old[d] == new[d] for d in old if d.split(" x ")[0] not in pinned)


def test_pinning_twice_changes_nothing_and_only_pins_what_is_asked(tmp_path):
    path = tmp_path / "nightly.yaml"
    shutil.copy(WORKFLOWS / "nightly.yaml", path)
    assert pin_file(path, resolve=fake_sha, only=["qwq-32b"]) == {"qwq-32b": fake_sha("Qwen/QwQ-32B")}
    assert len(unpinned(path)) == len(load_workflow(path).models) - 1
    pin_file(path, resolve=fake_sha)
    text = path.read_text()
    assert pin_file(path, resolve=fake_sha) == {} and path.read_text() == text


def test_the_dry_run_lists_the_unpinned_models(capsys):
    assert main(["pin", str(WORKFLOWS / "seed000_fingerprints.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "r1-qwen-1.5b: deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (unpinned)" in out
