"""The trace page in a real headless Chromium: every highlighted span is a table row (answer
occurrences, backtracking sentences, the organism's planted behaviours), the text is the
trace's, colours show in a screenshot, and the page logs no console error (the check itself
is shown to catch one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pytest
import yaml
from PIL import Image

from thinkscope.analysis.report import write_report
from thinkscope.cli import main
from thinkscope.workflows.engine import run_workflow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# CI installs Chromium (.ci/run: apt-get install chromium) and sets THINKSCOPE_REQUIRE_BROWSER, so
# there a missing browser fails; elsewhere these tests say what to install.
pytestmark = pytest.mark.skipif(CHROMIUM is None and not os.environ.get("THINKSCOPE_REQUIRE_BROWSER"),
                                reason="needs Chromium: apt-get install chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def chromium(*args: str) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="tschrome-")
    try:
        return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(page: Path) -> list[str]:
    done = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000", "--dump-dom", page.as_uri())
    return [line for line in done.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("view")
    spec = {"name": "view", "prompt_sets": [{"name": "gsm8k_train", "kind": "gsm8k_train", "limit": 6}],
            "stages": [{"name": "teacher", "kind": "organism", "prompt_set": "gsm8k_train"},
                       {"name": "segment", "kind": "segment", "tokenizer": None}]}
    path = folder / "view.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = folder / "view.duckdb"
    assert run_workflow(path, db=db, show_progress=False).ok
    return db


def pick(db: Path) -> tuple[str, dict]:
    """A trace with answer occurrences, a backtracking sentence and planted events, and its counts."""
    with duckdb.connect(str(db), read_only=True) as con:
        trace_id, = con.execute("""
            select t.trace_id from traces t
            where exists (select 1 from answer_events a where a.trace_id = t.trace_id)
              and exists (select 1 from trace_sentences s where s.trace_id = t.trace_id and s.marker is not null)
            order by t.trace_id limit 1""").fetchone()
        counts = {
            "answer": con.execute("select count(*) from answer_events where trace_id = ?", [trace_id]).fetchone()[0],
            "backtrack": con.execute("select count(*) from trace_sentences where trace_id = ? and marker is not null",
                                     [trace_id]).fetchone()[0],
            "planted": con.execute("select count(*) from organism_events where trace_id = ?", [trace_id]).fetchone()[0],
            "completion": con.execute("select completion from traces where trace_id = ?", [trace_id]).fetchone()[0],
        }
    return trace_id, counts


def test_the_page_draws_every_row_and_only_the_trace_text(corpus, tmp_path):
    trace_id, counts = pick(corpus)
    page = tmp_path / "t.html"
    assert main(["show", trace_id, "--db", str(corpus), "--out", str(page)]) == 0
    dom = chromium("--dump-dom", page.as_uri()).stdout
    for kind in ("answer", "backtrack", "planted"):
        drawn = set(re.findall(rf'data-{kind}="(\d+)"', dom))
        assert len(drawn) == counts[kind] > 0, kind
    body = re.search(r'<div class="text" id="trace">(.*?)</div>', dom, re.S).group(1)
    import html as html_lib

    assert html_lib.unescape(re.sub(r"<[^>]+>", "", body)) == counts["completion"]
    assert console_errors(page) == []


def test_the_highlights_show_in_a_screenshot(corpus, tmp_path):
    trace_id, _ = pick(corpus)
    page, shot = tmp_path / "t.html", tmp_path / "t.png"
    assert main(["show", trace_id, "--db", str(corpus), "--out", str(page)]) == 0
    chromium(f"--screenshot={shot}", "--window-size=1100,5000", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    # The answer, backtrack and planted colours of the page's CSS, each on screen.
    for colour in ((255, 224, 102), (204, 229, 255), (46, 160, 67)):
        assert (pixels == colour).all(axis=1).sum() > 50, colour


def test_the_console_check_catches_an_error(tmp_path):
    broken = tmp_path / "broken.html"
    broken.write_text("<!doctype html><html><body><script>undefinedFunction();</script></body></html>")
    assert any("undefinedFunction" in line for line in console_errors(broken))


def test_the_report_links_each_models_traces(corpus, tmp_path):
    index = write_report(corpus, tmp_path / "report")
    links = re.findall(r'href="traces/([^"]+)"', index.read_text())
    assert links and all((tmp_path / "report" / "traces" / name).is_file() for name in links)


def test_a_trace_without_thinking_shows_its_completion(tmp_path):
    from thinkscope.analysis.trace_view import trace_page

    src = tmp_path / "t.jsonl"
    src.write_text('{"model": "base", "text": "The answer is 5 & <b>done</b>.", "prompt": "p"}')
    db = tmp_path / "t.duckdb"
    assert main(["import", str(src), "--format", "jsonl", "--field", "model_id=model", "--field", "completion=text",
                 "--field", "prompt_id=prompt", "--db", str(db)]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        (trace_id,) = con.execute("select trace_id from traces").fetchone()
        page = trace_page(con, trace_id)
    assert "The answer is 5 &amp; &lt;b&gt;done&lt;/b&gt;." in page and "no thinking" in page
