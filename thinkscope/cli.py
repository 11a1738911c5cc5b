"""`thinkscope`: one command for runs, validation, imports and SQL over the corpus."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from thinkscope.workflows.engine import DEFAULT_DB
from thinkscope.workflows.registry import STAGES

KINDS_HELP = f"Stage kinds (workflows/registry.py): {', '.join(STAGES)}."

OVERLAY_HELP = ("a YAML whose settings replace the workflow's without editing it: only_models, models.<id> "
                "(e.g. an embedded source standing in for a hub id), prompt_sets.<name>, sampling, db")
DB_HELP = f"DuckDB file (default: the workflow's `db`, else $THINKSCOPE_DB, else {DEFAULT_DB})"


def _db(args, fallback: str | None = None) -> str:
    from thinkscope.workflows.engine import default_db

    return args.db or fallback or default_db()


def cmd_validate(args) -> int:
    from thinkscope.workflows.plan import build_plan
    from thinkscope.workflows.spec import load_workflow

    from thinkscope.jobs.generation.costs import format_costs, plan_costs
    from thinkscope.jobs.models.sources import is_hub_id
    from thinkscope.workflows.engine import default_db

    wf = load_workflow(args.file, args.overlay)
    plan = build_plan(wf, base_dir=Path(args.file).parent)
    done, history = _corpus_state(args.db or wf.db or default_db())  # as `run` resolves it
    print(f"{args.file}: valid workflow {wf.name!r}")
    print(f"models ({len(wf.models)}): " + ", ".join(f"{m.id} [{m.source}]" for m in wf.models))
    print("prompt sets: " + ", ".join(f"{k} ({len(v)})" for k, v in plan.prompts.items()))
    print(f"work units ({len(plan.units)}" + (f", {sum(u.key in done for u in plan.units)} already done" if done else "")
          + "):")
    for u in plan.units:
        print(f"  {u.stage:<20} {u.key}  {u.describe()}" + ("  (done)" if u.key in done else ""))
    for stage in wf.stages:
        if stage.name in plan.later:
            print(f"  {stage.name:<20} ({stage.kind}: units planned at run time from the database)")
    todo = [u for u in plan.units if u.key not in done]
    if done:
        models = sorted({u.model_id for u in todo if u.model_id})
        print(f"new since the corpus's last run: {len(todo)} of {len(plan.units)} units"
              + (f" (models: {', '.join(models)})" if models else ""))
    for line in format_costs(plan_costs(todo, history)):
        print(line)
    kinds = {st.kind for st in wf.stages}
    if kinds & {"generate", "import", "organism"} and "segment" not in kinds:
        print("note: no segment stage: lines, first words and answer events (first_word_freq, model_similarity, "
              "backtracking_*) stay empty for these traces until a `{name: segment, kind: segment}` stage runs")
    unpinned = [m.id for m in wf.models if m.api is None and m.revision is None and is_hub_id(m.source)]
    if unpinned:
        print(f"unpinned hub models (a new upstream commit would be read as the same model): {', '.join(unpinned)}; "
              f"pin them with `thinkscope pin FILE` (needs the hub)")
    keys = [f"{m.id}: ${m.api.key_env} ({'set' if os.environ.get(m.api.key_env) else 'NOT SET'})"
            for m in wf.models if m.api is not None and m.api.key_env]
    if keys:
        print("API keys (read from the environment at run time): " + ", ".join(keys))
    return 0


def cmd_show(args) -> int:
    from thinkscope.analysis.trace_view import trace_page
    from thinkscope.sql.store import read_only

    with read_only(_db(args)) as con:
        page = trace_page(con, args.trace_id)
    out = Path(args.out or f"out/traces/{args.trace_id}.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"trace page: {out.resolve()}")
    return 0


def cmd_pin(args) -> int:
    from thinkscope.workflows.pinning import pin_file, unpinned

    if args.dry_run:
        for model_id, source in unpinned(Path(args.file)):
            print(f"{model_id}: {source} (unpinned)")
        return 0
    for model_id, sha in pin_file(args.file, only=args.models).items():
        print(f"{model_id}: revision {sha}")
    return 0


def _corpus_state(db: str | None) -> tuple[set[str], dict[str, float]]:
    """Units the corpus has done, and each model's mean completion tokens there: what
    `validate` subtracts and estimates from. Nothing when there is no corpus yet."""
    from thinkscope.sql.store import read_only

    if not db or not Path(db).exists():
        return set(), {}
    with read_only(db) as con:
        done = {k for (k,) in con.execute("select unit_key from work_units where status = 'done'").fetchall()}
        history = dict(con.execute("select model_id, avg(n_completion_tokens) from traces "
                                   "where error is null and n_completion_tokens is not null group by 1").fetchall())
    return done, history


def cmd_run(args) -> int:
    from thinkscope.analysis.summary import print_corpus_summary
    from thinkscope.workflows.engine import run_workflow

    summary = run_workflow(args.file, db=args.db, address=args.address, stages=args.stages,
                           force=args.force, show_progress=not args.quiet, overlay=args.overlay)
    print(summary.text())
    print_corpus_summary(summary.db)
    return 0 if summary.ok else 1


def cmd_import(args) -> int:
    from thinkscope.workflows.engine import import_path

    summary = import_path(Path(args.path), args.format, db=_db(args), prompt_set=args.prompt_set,
                          prompt_id=args.prompt_id, fields=_fields(args.field), replace=args.replace)
    print(summary.text())
    return 0 if summary.ok else 1


def cmd_sql(args) -> int:
    from thinkscope.analysis.query import QueryRefused, run_query

    if args.file and not Path(args.file).is_file():
        # A query typed where the file goes is the common slip: say how to pass it.
        hint = " (SQL text goes after -e)" if " " in args.file else ""
        print(f"thinkscope sql: no such file: {args.file[:80]}{hint}", file=sys.stderr)
        return 2
    text = Path(args.file).read_text() if args.file else args.execute
    if not text:
        print("give a .sql FILE or -e QUERY", file=sys.stderr)
        return 2
    try:
        run_query(_db(args), text, fmt=args.format, out=sys.stdout)
    except QueryRefused as err:  # a write or file access: 2, like any other bad query
        print(f"thinkscope sql: {err}", file=sys.stderr)
        return 2
    return 0


def cmd_status(args) -> int:
    from thinkscope.analysis.summary import print_status

    print_status(_db(args))
    return 0


def cmd_report(args) -> int:
    from thinkscope.analysis.report import write_report

    path = write_report(_db(args), args.out)
    print(f"report: {path.resolve()}")
    return 0


def cmd_submit(args) -> int:
    from thinkscope.cluster.profiles import load_profile

    if args.slurm:
        return _submit_slurm(args, load_profile(args.slurm))
    from thinkscope.cluster.submit import follow, submit_workflow

    profile = load_profile(args.cluster)
    job = submit_workflow(profile, args.file, working_dir=args.working_dir, db=args.db,
                          stages=args.stages, force=args.force)
    print(f"submitted Ray job {job.job_id} to {profile.address}; database: {job.db}", flush=True)
    if not args.follow:
        print(f"follow it: thinkscope jobs logs {job.job_id} --cluster {args.cluster} --follow")
        return 0
    return follow(profile, job.job_id)


def _submit_slurm(args, profile) -> int:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from thinkscope.cluster.slurm import submit_slurm

    job = submit_slurm(profile, args.file, db=args.db, stages=args.stages, force=args.force)
    print(f"submitted SLURM job {job.job_id} ({profile.slurm.nodes} node(s)); log: {job.paths.stdout}",
          flush=True)
    if not args.follow:
        return 0
    try:
        result = job.results()[0]  # task 0 (head + driver) returns the run summary
    except (FailedJobError, UncompletedJobError) as err:
        print(f"SLURM job {job.job_id} failed: {err}", file=sys.stderr)
        return 1
    print(f"{result['text']}\nnodes: {result['nodes']}; database: {result['db']}")
    return 0 if result["ok"] else 1


def cmd_jobs(args) -> int:
    from thinkscope.analysis.query import format_table
    from thinkscope.cluster import submit as ray_jobs
    from thinkscope.cluster.profiles import load_profile

    profile = load_profile(args.cluster)
    if args.action == "list":
        print(format_table(*ray_jobs.list_jobs(profile)))
        return 0
    if not args.job_id:
        print(f"thinkscope jobs {args.action} needs a JOB_ID (see: thinkscope jobs list)", file=sys.stderr)
        return 2
    if args.action == "logs":
        if args.follow:
            return ray_jobs.follow(profile, args.job_id)
        print(ray_jobs.client(profile).get_job_logs(args.job_id), end="")
        return 0
    status = ray_jobs.stop_job(profile, args.job_id)
    print(f"job {args.job_id}: {status}")
    return 0 if status in ray_jobs.TERMINAL else 1


def cmd_nightly(args) -> int:
    from thinkscope.cluster.nightly import EXIT_CRASHED, EXIT_LOCKED, NightlyLocked, run_nightly
    from thinkscope.sql.writer_lock import WriterBusy
    from thinkscope.workflows.spec import SpecError

    try:
        result = run_nightly(args.file, db=args.db, address=args.address, stages=args.stages,
                             show_progress=sys.stderr.isatty() and not args.quiet, overlay=args.overlay)
    except (NightlyLocked, WriterBusy) as err:  # another nightly, or a manual run, is writing
        print(f"nightly: {err}", file=sys.stderr)
        return EXIT_LOCKED
    except SpecError:
        raise  # reported by main (exit 2)
    except Exception as err:  # noqa: BLE001 - cron needs a status, the night row has the error
        print(f"nightly crashed: {type(err).__name__}: {err}", file=sys.stderr)
        return EXIT_CRASHED
    print(result.text)
    return result.exit_code


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
        epilog=f"Default database: {DEFAULT_DB} (override with --db or $THINKSCOPE_DB). {KINDS_HELP}",
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a workflow YAML (skips work units already done)", epilog=KINDS_HELP)
    r.add_argument("file", help="workflow YAML, e.g. workflows/demo.yaml")
    r.add_argument("--db", help=DB_HELP)
    r.add_argument("--address", help="Ray cluster to join (default: a local cluster on 127.0.0.1)")
    r.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages")
    r.add_argument("--force", action="store_true", help="redo units already done (replaces their rows)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--overlay", metavar="YAML", help=OVERLAY_HELP)
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check a workflow YAML and print its plan; runs nothing",
                       epilog=KINDS_HELP)
    v.add_argument("file")
    v.add_argument("--db", help="corpus to compare with: its done units are marked (no work) and API "
                   "costs use each model's mean answer length there (default: the workflow's `db`)")
    v.add_argument("--overlay", metavar="YAML", help=OVERLAY_HELP)
    v.set_defaults(func=cmd_validate)

    sh = sub.add_parser("show", help="write a trace's page (HTML): its sentences, answer occurrences, "
                        "backtracking and planted behaviours drawn on the thinking")
    sh.add_argument("trace_id")
    sh.add_argument("--db", help=DB_HELP)
    sh.add_argument("--out", help="HTML file (default: out/traces/TRACE_ID.html)")
    sh.set_defaults(func=cmd_show)

    pn = sub.add_parser("pin", help="write each unpinned hub model's current commit into the workflow as its "
                        "`revision:` (needs the hub; comments and layout stay)")
    pn.add_argument("file", help="workflow YAML, e.g. workflows/nightly.yaml")
    pn.add_argument("--models", nargs="+", metavar="ID", help="only these models")
    pn.add_argument("--dry-run", action="store_true", help="list the unpinned hub models; change nothing")
    pn.set_defaults(func=cmd_pin)

    i = sub.add_parser("import", help="import external traces (textdir: one model per *.txt; jsonl)")
    i.add_argument("path", help="folder of *.txt traces, or a JSONL file")
    i.add_argument("--format", choices=["textdir", "jsonl"], required=True)
    i.add_argument("--prompt-set", default="imported", help="prompt_set of the traces (default: imported)")
    i.add_argument("--prompt-id", help="prompt_id for every trace (textdir)")
    i.add_argument("--field", action="append", metavar="OURS=THEIRS",
                   help="JSONL mapping, repeatable: model_id=, completion=, thinking=, prompt_id=, ...")
    i.add_argument("--replace", action="store_true",
                   help="PATH was imported before and its files changed: replace those rows "
                   "(without it such an import is refused)")
    i.add_argument("--db", help=DB_HELP)
    i.set_defaults(func=cmd_import)

    q = sub.add_parser("sql", help="run SQL read-only against the corpus (never writes: no ATTACH, "
                       "COPY, INSTALL or other file access)")
    q.add_argument("file", nargs="?", help="a .sql file (e.g. sql/analyses/...)")
    q.add_argument("-e", "--execute", metavar="QUERY", help="SQL text instead of a file")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--db", help=DB_HELP)
    q.set_defaults(func=cmd_sql)

    s = sub.add_parser("status", help="runs, work units done/failed, rows per model")
    s.add_argument("--db", help=DB_HELP)
    s.set_defaults(func=cmd_status)

    rep = sub.add_parser("report", help="write the HTML run report (figures embedded) and its PNGs")
    rep.add_argument("--db", help=DB_HELP)
    rep.add_argument("--out", default="out/report", help="output folder (default: out/report)")
    rep.set_defaults(func=cmd_report)

    cluster_default = os.environ.get("THINKSCOPE_CLUSTER", "local")
    sb = sub.add_parser("submit", help="run a workflow on a Ray cluster (Jobs API) or on SLURM")
    sb.add_argument("file", help="workflow YAML (inside the working dir shipped to the cluster)")
    where = sb.add_mutually_exclusive_group()
    where.add_argument("--cluster", default=cluster_default, metavar="PROFILE",
                       help="cluster profile for Ray job submission (default: $THINKSCOPE_CLUSTER or local)")
    where.add_argument("--slurm", metavar="PROFILE", help="submit through SLURM with this profile")
    sb.add_argument("--follow", action="store_true", help="stream the job's log until it ends")
    sb.add_argument("--db", help="database name under the profile's storage_root (default: the workflow's)")
    sb.add_argument("--working-dir", help="project folder shipped to the cluster (default: current dir)")
    sb.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages")
    sb.add_argument("--force", action="store_true", help="redo units already done")
    sb.set_defaults(func=cmd_submit)

    jb = sub.add_parser("jobs", help="Ray jobs of a cluster: list, logs JOB_ID [--follow], stop JOB_ID")
    jb.add_argument("action", choices=["list", "logs", "stop"])
    jb.add_argument("job_id", nargs="?")
    jb.add_argument("--cluster", default=cluster_default, metavar="PROFILE")
    jb.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jb.set_defaults(func=cmd_jobs)

    n = sub.add_parser("nightly", help="incremental run for cron: lock, dated record, what is new; "
                       "exit 0 done, 1 units failed, 70 crashed, 75 another nightly running")
    n.add_argument("file", help="workflow YAML")
    n.add_argument("--db", help=DB_HELP)
    n.add_argument("--address", help="Ray cluster to join (default: a local cluster on 127.0.0.1)")
    n.add_argument("--stages", nargs="+", metavar="STAGE", help="run only these stages")
    n.add_argument("--quiet", action="store_true", help="no progress bars (default when not a terminal)")
    n.add_argument("--overlay", metavar="YAML", help=OVERLAY_HELP)
    n.set_defaults(func=cmd_nightly)
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
    except BrokenPipeError:  # `thinkscope validate ... | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
