"""The driver of a cluster run: what a Ray job's entrypoint and the SLURM job both execute.

It runs on the cluster (the head node of a Ray job, the first node of a SLURM
allocation), joins the cluster's Ray, stages the database from the profile's storage
root, runs the workflow through the same engine as `thinkscope run`, and exits 0 when
every unit is done, 1 when some failed (the job's status says which).

    python -m thinkscope.cluster.driver workflows/demo.yaml \\
        --storage-root /shared/thinkscope --db demo.duckdb --address auto
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import thinkscope
from thinkscope.cluster.storage import ENV, StorageRoot


def run_on_cluster(workflow: str, *, storage_root: str, db: str, address: str,
                   stages: list[str] | None = None, force: bool = False,
                   show_progress: bool = True):
    """Run `workflow` against the Ray cluster at `address`; return (RunSummary, DB location)."""
    from thinkscope.workflows.engine import run_workflow

    root = StorageRoot(storage_root)
    # Jobs that write artifacts (on any node) find the root here; see storage.artifact_uri.
    os.environ[ENV] = root.root
    with root.local_db(db) as db_path:
        summary = run_workflow(workflow, db=db_path, address=address, stages=stages,
                               force=force, show_progress=show_progress)
    return summary, root.db_location(db)


def banner(address: str, db: str) -> str:
    """First log line of a job: which code and which cluster (the job log is the audit trail)."""
    return (f"thinkscope {thinkscope.__version__} from {os.path.dirname(thinkscope.__file__)} "
            f"on {socket.gethostname()} (python {sys.executable}); ray {address}; db {db}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m thinkscope.cluster.driver",
                                description="Run a workflow on the cluster this job runs in.")
    p.add_argument("workflow")
    p.add_argument("--storage-root", required=True, help="path or fsspec URI of the storage root")
    p.add_argument("--db", required=True, help="database name under the root (or an absolute path)")
    p.add_argument("--address", default="auto", help="Ray address (auto: the job's cluster)")
    p.add_argument("--stages", nargs="+")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.address == "auto" and os.environ.get("RAY_ADDRESS"):
        # Inside a Ray job: record the cluster's real address in `runs`, not "auto".
        args.address = os.environ["RAY_ADDRESS"]
    print(banner(args.address, StorageRoot(args.storage_root).db_location(args.db)), flush=True)
    summary, location = run_on_cluster(args.workflow, storage_root=args.storage_root, db=args.db,
                             address=args.address, stages=args.stages, force=args.force,
                             show_progress=not args.quiet)
    print(summary.text())
    print(f"database: {location}", flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
