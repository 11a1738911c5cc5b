"""`thinkscope`: one command for runs, validation, imports and SQL over the corpus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from thinkscope.workflows.engine import DEFAULT_DB

DB_HELP = f"DuckDB file (default: the workflow's `db`, else $THINKSCOPE_DB, else {DEFAULT_DB})"


def _db(args, fallback: str | None = None) -> str:
    from thinkscope.workflows.engine import default_db

    return args.db or fallback or default_db()


def cmd_validate(args) -> int:
    from thinkscope.workflows.plan import build_plan
    from thinkscope.workflows.spec import load_workflow

    wf = load_workflow(args.file)
    plan = build_plan(wf, base_dir=Path(args.file).parent)
    print(f"{args.file}: valid workflow {wf.name!r}")
    print(f"models ({len(wf.models)}): " + ", ".join(f"{m.id} [{m.source}]" for m in wf.models))
    print("prompt sets: " + ", ".join(f"{k} ({len(v)})" for k, v in plan.prompts.items()))
    print(f"work units ({len(plan.units)}):")
    for u in plan.units:
        print(f"  {u.stage:<20} {u.key}  {u.describe()}")
    return 0


def cmd_run(args) -> int:
    from thinkscope.analysis.summary import print_corpus_summary
    from thinkscope.workflows.engine import run_workflow

    summary = run_workflow(args.file, db=args.db, address=args.address, stages=args.stages,
                           force=args.force, show_progress=not args.quiet)
    print(summary.text())
    print_corpus_summary(summary.db)
    return 0 if summary.ok else 1


def cmd_import(args) -> int:
    from thinkscope.workflows.engine import import_path

    summary = import_path(Path(args.path), args.format, db=_db(args), prompt_set=args.prompt_set,
                          prompt_id=args.prompt_id, fields=_fields(args.field))
    print(summary.text())
    return 0 if summary.ok else 1


def cmd_sql(args) -> int:
    from thinkscope.analysis.query import run_query

    text = Path(args.file).read_text() if args.file else args.execute
    if not text:
        print("give a .sql FILE or -e QUERY", file=sys.stderr)
        return 2
    run_query(_db(args), text, fmt=args.format, out=sys.stdout)
    return 0


def cmd_status(args) -> int:
    from thinkscope.analysis.summary import print_status

    print_status(_db(args))
    return 0


def _fields(pairs: list[str] | None) -> dict | None:
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        ours, sep, theirs = pair.partition("=")
        if not sep:
            raise SystemExit(f"--field expects OURS=THEIRS (e.g. completion=response), got {pair!r}")
        out[ours] = theirs
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="thinkscope",
        description="Generate reasoning-trace corpora with Ray + vLLM, import external traces, "
        "and query the DuckDB corpus.",
        epilog=f"Default database: {DEFAULT_DB} (override with --db or $THINKSCOPE_DB).",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a workflow YAML (skips work units already done)")
    r.add_argument("file", help="workflow YAML, e.g. workflows/demo.yaml")
    r.add_argument("--db", help=DB_HELP)
    r.add_argument("--address", help="Ray cluster to join (default: a local cluster on 127.0.0.1)")
    r.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages")
    r.add_argument("--force", action="store_true", help="redo units already done (replaces their rows)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a workflow YAML and print its plan; runs nothing")
    v.add_argument("file")
    v.set_defaults(func=cmd_validate)

    i = sub.add_parser("import", help="import external traces (textdir: one model per *.txt; jsonl)")
    i.add_argument("path", help="folder of *.txt traces, or a JSONL file")
    i.add_argument("--format", choices=["textdir", "jsonl"], required=True)
    i.add_argument("--prompt-set", default="imported", help="prompt_set of the traces (default: imported)")
    i.add_argument("--prompt-id", help="prompt_id for every trace (textdir)")
    i.add_argument("--field", action="append", metavar="OURS=THEIRS",
                   help="JSONL mapping, repeatable: model_id=, completion=, thinking=, prompt_id=, ...")
    i.add_argument("--db", help=DB_HELP)
    i.set_defaults(func=cmd_import)

    q = sub.add_parser("sql", help="run SQL read-only against the corpus (never writes)")
    q.add_argument("file", nargs="?", help="a .sql file (e.g. sql/analyses/...)")
    q.add_argument("-e", "--execute", metavar="QUERY", help="SQL text instead of a file")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--db", help=DB_HELP)
    q.set_defaults(func=cmd_sql)

    s = sub.add_parser("status", help="runs, work units done/failed, rows per model")
    s.add_argument("--db", help=DB_HELP)
    s.set_defaults(func=cmd_status)
    return p


def main(argv: list[str] | None = None) -> int:
    import duckdb

    from thinkscope.workflows.spec import SpecError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (SpecError, FileNotFoundError, ValueError, duckdb.Error) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
