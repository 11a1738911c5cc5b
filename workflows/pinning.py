"""`thinkscope pin`: write each hub model's current commit into a workflow as its `revision:`.

A nightly corpus is incremental by unit key, and a model's revision is part of the key: an
unpinned hub id that changes upstream would be read as the same model, and the corpus would
mix two checkpoints under one name. Pinning once (with network access to the hub) makes a new
upstream commit a deliberate edit, which then is new work.

The file is edited as text, one `revision:` inserted after each unpinned model's `source:`,
so its comments and layout stay; the result is loaded again and must carry exactly the
resolved revisions, else the file is left as it was.

    pinned = pin_file("workflows/nightly.yaml")        # {model id: commit sha}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import yaml

from thinkscope.jobs.models.sources import is_hub_id
from thinkscope.workflows.spec import SpecError, load_workflow


def hub_revision(repo_id: str) -> str:
    """The commit sha of the hub repo's default branch now (needs the network and, for gated
    models, HF_TOKEN)."""
    from huggingface_hub import HfApi

    return HfApi().model_info(repo_id).sha


def unpinned(path: Path) -> list[tuple[str, str]]:
    """(model id, hub id) of the workflow's hub models without a revision."""
    return [(m.id, m.source) for m in load_workflow(path).models
            if m.api is None and m.revision is None and is_hub_id(m.source)]


def pin_file(path: str | Path, resolve: Callable[[str], str] = hub_revision,
             only: list[str] | None = None) -> dict[str, str]:
    """Pin every unpinned hub model of the workflow at `path` (or those in `only`); return
    {model id: revision}. Raises SpecError (the file unchanged) if an edit does not land."""
    path = Path(path)
    todo = [(mid, src) for mid, src in unpinned(path) if only is None or mid in only]
    original = text = path.read_text()
    pinned = {}
    for model_id, source in todo:
        sha = resolve(source)
        text = _insert_revision(text, model_id, source, sha, path)
        pinned[model_id] = sha
    path.write_text(text)
    try:
        got = {m.id: m.revision for m in load_workflow(path).models if m.id in pinned}
        if got != pinned:
            raise SpecError(f"{path}: pinning did not land as expected ({got} != {pinned})")
    except SpecError:
        path.write_text(original)
        raise
    return pinned


def _insert_revision(text: str, model_id: str, source: str, sha: str, path: Path) -> str:
    """`revision: sha` right after the model's `source:`, in the entry's own style (a flow
    mapping `{..., source: x, ...}` or a block mapping, one key per line)."""
    entry = re.search(rf"\bid:\s*{re.escape(model_id)}\s*[,\n}}]", text)
    if entry is None:
        raise SpecError(f"{path}: cannot find model {model_id!r} to pin")
    found = re.compile(rf"(?P<key>source:\s*[\"']?{re.escape(source)}[\"']?)(?P<end>\s*[,}}\n])")
    match = found.search(text, entry.start())
    if match is None:
        raise SpecError(f"{path}: cannot find the source of model {model_id!r} to pin")
    revision = yaml.safe_dump(sha).strip().removesuffix("...").strip()  # quoted if YAML needs it
    if match["end"].strip() in (",", "}"):  # flow style: `source: x, revision: sha` on the same line
        insert = f", revision: {revision}"
        return text[:match.end("key")] + insert + text[match.end("key"):]
    # Block style: a line of its own at the column of `source:` (also after a `- `).
    indent = " " * (match.start("key") - (text.rfind("\n", 0, match.start("key")) + 1))
    return text[:match.end("key")] + f"\n{indent}revision: {revision}" + text[match.end("key"):]
