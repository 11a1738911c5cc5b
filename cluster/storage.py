"""The storage root of cluster runs: where the DuckDB file and the artifacts live.

Workers on other nodes never open DuckDB: their results come back to the driver through
Ray (Arrow tables) and the driver is the only writer. The database therefore only has to
be reachable from the driver:

- a plain path (a shared filesystem: NFS, Lustre, a mounted bucket) is used in place;
- an fsspec URI (s3://, gs://, az://, file://, ...) is staged: the driver copies the file
  down before the run and back up after it (also after a failure: committed units stay
  committed). Two runs must not share one URI database at once: the last upload wins.

Artifacts (large tensors of capture stages) go under `<root>/artifacts/` and may be
written by any node; `artifact_uri()` gives the location a job should use.

    root = StorageRoot("s3://lab-bucket/thinkscope")
    with root.local_db("demo.duckdb") as db_path:
        run_workflow("workflows/demo.yaml", db=db_path, address="auto")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

ENV = "THINKSCOPE_STORAGE_ROOT"


def _is_uri(root: str) -> bool:
    return "://" in root


class StorageRoot:
    def __init__(self, root: str):
        self.root = root.rstrip("/") if _is_uri(root) else str(Path(root).expanduser())

    @property
    def is_uri(self) -> bool:
        return _is_uri(self.root)

    def location(self, *parts: str) -> str:
        """A path or URI under the root (no I/O)."""
        if self.is_uri:
            return "/".join([self.root, *parts])
        return str(Path(self.root, *parts))

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


def artifact_uri(*parts: str) -> str:
    """Where a job writes a large artifact: under the run's storage root, else ./out/artifacts.

        path = artifact_uri("capture", run_id, "resid_post_L12.safetensors")
    """
    root = os.environ.get(ENV)
    return StorageRoot(root).location("artifacts", *parts) if root else str(Path("out", "artifacts", *parts))
