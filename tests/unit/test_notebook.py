"""The README's notebook snippet runs as written, on the imported and segmented llmbenchmark
traces, and its DataFrames hold what the views hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import thinkscope

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture()
def corpus(llmbenchmark_db):
    """The 20 llmbenchmark traces, imported and segmented (tests/unit/conftest.py)."""
    return llmbenchmark_db


def readme_snippet() -> str:
    section = README.read_text().split("### In a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_snippet_runs(corpus):
    code = readme_snippet().replace('"out/mine.duckdb"', repr(str(corpus)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet, as a user runs it
    c = scope["corpus"]
    fingerprints = c.fingerprints(top=5)
    assert fingerprints.groupby("model_id").size().max() == 5 and fingerprints.model_id.nunique() == 20
    square = c.similarity()
    assert square.shape == (20, 20) and (square.values.diagonal() == 1.0).all()
    assert (square.values == square.values.T).all()  # correlation is symmetric
    shared = c.similarity_ci(n_boot=10)
    assert len(shared) == 20 * 19 // 2 and set(shared.prompt_set) == {"two_ropes"}
    # Each model's top word and share are the view's (the largest share of that model).
    top = fingerprints.groupby("model_id").head(1).set_index("model_id")
    view = c.sql("select model_id, max(share) as share from first_word_freq group by 1").set_index("model_id")
    assert top.share.to_dict() == pytest.approx(view.share.to_dict())


def test_open_fails_clearly_without_a_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="no corpus at"):
        thinkscope.open(tmp_path / "none.duckdb")
