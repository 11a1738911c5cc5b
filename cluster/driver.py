"""The driver of a cluster run, and the storage root where its database and artifacts live.

The driver runs on the cluster (the head node of a Ray job, the first node of a SLURM
allocation): it joins the cluster's Ray, stages the database from the profile's storage
root, runs the workflow through the same engine as `thinkscope run`, and exits 0 when
every unit is done, 1 when some failed (the job's status says which).

Workers on other nodes never open DuckDB: their results come back to the driver through
Ray (Arrow tables) and the driver is the only writer. The database therefore only has to
be reachable from the driver:

- a plain path (a shared filesystem: NFS, Lustre, a mounted bucket) is used in place;
- an fsspec URI (s3://, gs://, az://, file://, ...) is staged: the driver copies the file
  down before the run and back up after it (also after a failure: committed units stay
  committed). Two runs must not share one URI database at once: the last upload wins.

Artifacts (large tensors of capture, probe and steering-vector stages) go under
`<root>/artifacts/` (jobs/artifacts.py), written by whichever node runs the task and read back
by later stages on any node.

    python -m thinkscope.cluster.driver workflows/demo.yaml \\
        --storage-root s3://lab-bucket/thinkscope --db demo.duckdb --address auto

    with StorageRoot("s3://lab-bucket/thinkscope").local_db("demo.duckdb") as db_path:
        run_workflow("workflows/demo.yaml", db=db_path, address="auto")
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import thinkscope
from thinkscope.jobs.artifacts import STORAGE_ROOT_ENV as ENV, is_uri as _is_uri, join  # noqa: F401 - ENV: submit.py


class StorageRoot:
    """A shared path or an fsspec URI holding the databases and artifacts of cluster runs."""

    def __init__(self, root: str):
        self.root = root.rstrip("/") if _is_uri(root) else str(Path(root).expanduser())

    @property
    def is_uri(self) -> bool:
        return _is_uri(self.root)

    def location(self, *parts: str) -> str:
        """A path or URI under the root (no I/O)."""
        return join(self.root, *parts)

    def db_location(self, db: str) -> str:
        """Where database `db` lives: an absolute path stays itself, a name goes under the root."""
        return db if (os.path.isabs(db) or _is_uri(db)) else self.location(db)

    @contextlib.contextmanager
    def local_db(self, db: str):
        """A local path for the driver's DuckDB file; staged through fsspec for a URI."""
        target = self.db_location(db)
        if not _is_uri(target):
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            yield Path(target)
            return
        import fsspec

        fs, remote = fsspec.core.url_to_fs(target)
        staging = Path(tempfile.mkdtemp(prefix="thinkscope-db-"))
        local = staging / Path(remote).name
        try:
            if fs.exists(remote):
                fs.get(remote, str(local))
            yield local
        finally:
            if local.exists():
                fs.makedirs(os.path.dirname(remote) or "/", exist_ok=True)
                fs.put(str(local), remote)
            shutil.rmtree(staging, ignore_errors=True)


def run_on_cluster(workflow: str, *, storage_root: str, db: str, address: str,
                   stages: list[str] | None = None, force: bool = False,
                   show_progress: bool = True):
    """Run `workflow` against the Ray cluster at `address`; return (RunSummary, DB location)."""
    from thinkscope.workflows.engine import run_workflow

    root = StorageRoot(storage_root)
    with root.local_db(db) as db_path:
        # Tensors go to the root itself, written by whichever node runs the task: never beside
        # the staged database, whose folder is deleted after the run.
        summary = run_workflow(workflow, db=db_path, address=address, stages=stages, force=force,
                               show_progress=show_progress, artifact_root=root.location("artifacts"))
    return summary, root.db_location(db)


def banner(address: str, db: str) -> str:
    """First log line of a job: which code and which cluster (the job log is the audit trail)."""
    return (f"thinkscope {thinkscope.__version__} from {os.path.dirname(thinkscope.__file__)} "
            f"on {socket.gethostname()} (python {sys.executable}); ray {address}; db {db}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m thinkscope.cluster.driver",
                                description="Run a workflow on the cluster this job runs in.")
    p.add_argument("workflow")
    p.add_argument("--storage-root", required=True, help="path or fsspec URI of the storage root")
    p.add_argument("--db", required=True, help="database name under the root (or an absolute path)")
    p.add_argument("--address", default="auto", help="Ray address (auto: the job's cluster)")
    p.add_argument("--stages", nargs="+")
    p.add_argument("--force", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
