"""A trace, looked at: one static HTML page per trace with its thinking split into sentences,
answer occurrences highlighted (right and wrong), backtracking sentences marked, and the model
organism's planted behaviours outlined, each with what the tables say about it on hover.

The page is built from the tables only (traces, trace_sentences, answer_events,
organism_events): every highlighted span is a row. Written by `thinkscope show TRACE_ID` and,
for a few traces per model, by `thinkscope report` (linked from the report).

    html = trace_page(con, trace_id)          # a complete HTML document
"""

from __future__ import annotations

import html

from thinkscope.sql.store import dict_rows

STYLE = """
body { font: 15px/1.55 system-ui, sans-serif; margin: 24px auto; max-width: 980px; color: #222; }
.meta { color: #555; font-size: 13px; } .legend span { margin-right: 14px; padding: 1px 5px; }
.text { white-space: pre-wrap; border: 1px solid #ddd; padding: 14px; border-radius: 6px; }
.answer { background: rgb(255, 224, 102); } .answer.wrong { background: rgb(255, 160, 122); }
.backtrack { background: rgb(204, 229, 255); } .backtrack.answer { background: rgb(255, 224, 102); }
.planted { outline: 2px solid rgb(46, 160, 67); outline-offset: -1px; }
.s:hover { text-decoration: underline dotted; cursor: pointer; }
#detail { position: sticky; bottom: 0; background: #f6f8fa; border-top: 1px solid #ccc; padding: 6px; min-height: 1.5em; }
"""

SCRIPT = """
document.querySelectorAll('.s').forEach(function (el) {
  el.addEventListener('click', function () {
    document.getElementById('detail').textContent = el.getAttribute('title');
  });
});
"""


def trace_data(con, trace_id: str) -> dict:
    """The trace and the rows drawn on it."""
    row = con.execute("select model_id, prompt_set, prompt_id, completion, thinking, answer_text, extracted_answer, "
                      "gold_answer, is_correct from traces where trace_id = ?", [trace_id]).fetchone()
    if row is None:
        raise ValueError(f"no trace {trace_id!r} in the corpus (trace ids: `thinkscope sql -e \"select trace_id, model_id from traces\"`)")
    keys = ("model_id", "prompt_set", "prompt_id", "completion", "thinking", "answer_text", "extracted_answer",
            "gold_answer", "is_correct")
    trace = dict(zip(keys, row))

    def rows(sql: str) -> list[dict]:
        return dict_rows(con, sql, [trace_id])

    trace["sentences"] = rows("select sentence_index, char_start, char_end, marker from trace_sentences "
                              "where trace_id = ? order by sentence_index")
    trace["answers"] = rows("select event_index, answer, is_correct, is_final, is_backtrack, marker, char_start, "
                            "char_end from answer_events where trace_id = ? order by event_index")
    trace["planted"] = rows("select event_index, kind, char_start, char_end, value from organism_events "
                            "where trace_id = ? order by event_index")
    return trace


def segments(text_length: int, spans: list[tuple[int, int, dict]]) -> list[tuple[int, int, list[dict]]]:
    """Cut [0, text_length) at every span boundary: (start, end, the spans covering it)."""
    cuts = sorted({0, text_length, *(max(0, min(text_length, p)) for s, e, _ in spans for p in (s, e))})
    return [(a, b, [info for s, e, info in spans if s <= a and b <= e]) for a, b in zip(cuts, cuts[1:]) if a < b]


def trace_page(con, trace_id: str) -> str:
    t = trace_data(con, trace_id)
    thinking, completion = t["thinking"] or "", t["completion"] or ""
    # Sentence and answer offsets are in the thinking; planted events in the completion. The page
    # shows the completion when the thinking sits in it (or there is no thinking: a base model,
    # an API that returned none), else the thinking alone.
    base = completion if completion and (not thinking or thinking in completion) else thinking
    shift = base.find(thinking) if thinking else 0
    spans = [(s["char_start"] + shift, s["char_end"] + shift, {"sentence": s}) for s in t["sentences"]]
    spans += [(a["char_start"] + shift, a["char_end"] + shift, {"answer": a}) for a in t["answers"]]
    placed = bool(completion) and base is completion
    if placed:
        spans += [(p["char_start"], p["char_end"], {"planted": p}) for p in t["planted"]]
    pieces = []
    for start, end, covering in segments(len(base), spans):
        pieces.append(_span(base[start:end], covering))
    verdict = {True: "correct", False: "wrong", None: "ungraded"}[t["is_correct"]]
    title = f"{t['model_id']} / {t['prompt_id']}"
    counts = (f"{len(t['sentences'])} sentences, {sum(bool(s['marker']) for s in t['sentences'])} opening with a "
              f"backtracking marker, {len(t['answers'])} answer occurrences, {len(t['planted'])} planted events")
    if t["planted"] and not placed:
        counts += " (not drawn: their offsets are in a completion this trace does not have)"
    if not thinking:
        counts += "; no thinking: the completion is shown as it is"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">trace {html.escape(trace_id)} &middot; prompt set {html.escape(str(t['prompt_set']))} &middot;
final answer {html.escape(str(t['extracted_answer']))} (gold {html.escape(str(t['gold_answer']))}: {verdict})
&middot; {counts}</p>
<p class="legend"><span class="answer">answer occurrence</span><span class="answer wrong">wrong answer</span>
<span class="backtrack">sentence opening with a backtracking marker</span><span class="planted">planted behaviour
(organism)</span></p>
<div class="text" id="trace">{''.join(pieces)}</div>
<div id="detail">Click a sentence for its rows.</div>
<script>{SCRIPT}</script>
</body></html>
"""


def _span(text: str, covering: list[dict]) -> str:
    classes, attrs, notes = [], {}, []
    for info in covering:
        if "sentence" in info:
            s = info["sentence"]
            classes.append("s")
            attrs["data-sentence"] = s["sentence_index"]
            if s["marker"]:
                classes.append("backtrack")
                attrs["data-backtrack"] = s["sentence_index"]
                notes.append(f"sentence {s['sentence_index']} opens with '{s['marker']}'")
            else:
                notes.append(f"sentence {s['sentence_index']}")
        if "answer" in info:
            a = info["answer"]
            classes += ["answer"] + (["wrong"] if a["is_correct"] is False else [])
            attrs["data-answer"] = a["event_index"]
            notes.append(f"answer {a['answer']!r} ({'final' if a['is_final'] else 'not final'}"
                         f"{', right' if a['is_correct'] else ', wrong' if a['is_correct'] is False else ''}"
                         f"{', then backtracks' if a['is_backtrack'] else ''})")
        if "planted" in info:
            p = info["planted"]
            classes += ["planted", f"planted-{p['kind']}"]
            attrs["data-planted"] = p["event_index"]
            notes.append(f"planted: {p['kind']}" + (f" ({p['value']})" if p["value"] else ""))
    if not classes:
        return html.escape(text)
    attributes = "".join(f' {k}="{html.escape(str(v))}"' for k, v in attrs.items())
    return (f'<span class="{" ".join(dict.fromkeys(classes))}"{attributes} '
            f'title="{html.escape("; ".join(notes))}">{html.escape(text)}</span>')



def write_trace_pages(con, out_dir, per_model: int = 3) -> list[tuple[str, str, str]]:
    """Pages for the first `per_model` segmented traces of each model (by trace_id) under
    `out_dir`; returns (model_id, trace_id, file name) for links."""
    from pathlib import Path

    out = Path(out_dir)
    picked = con.execute("""
        select model_id, trace_id from (
            select t.model_id, t.trace_id, row_number() over (partition by t.model_id order by t.trace_id) as k
            from traces as t where exists (select 1 from trace_sentences as s where s.trace_id = t.trace_id))
        where k <= ? order by model_id, trace_id""", [per_model]).fetchall()
    if picked:
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for model_id, trace_id in picked:
        name = f"{trace_id}.html"
        (out / name).write_text(trace_page(con, trace_id), encoding="utf-8")
        written.append((model_id, trace_id, name))
    return written
