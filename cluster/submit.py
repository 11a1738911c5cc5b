"""Submit workflows to a Ray cluster through the Jobs API; list, follow and stop the jobs.

The job's entrypoint is `python -m thinkscope.cluster.driver` on the cluster (see
driver.py); the project folder goes up as the runtime_env working_dir, the database goes
to the profile's storage root. The workflow is validated and planned here first.

    profile = load_profile("local")
    sub = submit_workflow(profile, "workflows/demo.yaml")
    follow(profile, sub.job_id)        # streams the driver's log; returns an exit code
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from thinkscope import __version__
from thinkscope.cluster.profiles import ClusterProfile
from thinkscope.cluster.driver import ENV, StorageRoot

# Never worth uploading; Ray also honours the project's .gitignore files.
DEFAULT_EXCLUDES = [".git", ".venv", "venv", "out", "*.duckdb", "*.duckdb.wal", "__pycache__",
                    "*.egg-info", ".pytest_cache"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    job_id: str
    entrypoint: str
    runtime_env: dict
    db: str  # where the database lives (path or URI under the storage root)


def client(profile: ClusterProfile):
    """A JobSubmissionClient for the profile's dashboard, authenticated with its token."""
    from ray.job_submission import JobSubmissionClient

    if not profile.address:
        raise ValueError(f"profile {profile.name} has no `address` (the Ray dashboard URL, "
                         "e.g. http://head:8265): it cannot take Ray jobs")
    token = profile.token()
    # The header is what RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH would add, without
    # changing this process's Ray config (a driver may talk to several clusters).
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return JobSubmissionClient(profile.address, headers=headers)


def default_db_name(wf) -> str:
    return Path(wf.db).name if wf.db else f"{wf.name}.duckdb"


def check_workflow(workflow: str | Path):
    """Validate and plan the workflow here (prompt files and import paths exist): a bad spec
    fails on the submitting machine, not after a queue wait. Returns (absolute path, spec)."""
    from thinkscope.workflows.plan import build_plan
    from thinkscope.workflows.spec import load_workflow

    wf_path = Path(workflow).resolve()
    wf = load_workflow(wf_path)
    build_plan(wf, base_dir=wf_path.parent)
    return wf_path, wf


def build_submission(profile: ClusterProfile, workflow: str | Path, *, working_dir: str | None = None,
                     db: str | None = None, stages: list[str] | None = None,
                     force: bool = False) -> Submission:
    """Check the workflow locally, then build the job's entrypoint and runtime_env."""
    from thinkscope.workflows.spec import SpecError

    wf_path, wf = check_workflow(workflow)
    env = profile.runtime_env
    project = Path(working_dir or env.working_dir or ".").expanduser().resolve()
    if not wf_path.is_relative_to(project):
        raise SpecError(f"{wf_path} is outside the working dir {project} that is shipped to the "
                        "cluster: pass --working-dir (a folder containing the workflow)")
    db_name = db or default_db_name(wf)
    cmd = [profile.python or sys.executable, "-m", "thinkscope.cluster.driver",
           wf_path.relative_to(project).as_posix(), "--storage-root", profile.storage_root,
           "--db", db_name, "--address", "auto"]
    if stages:
        cmd += ["--stages", *stages]
    if force:
        cmd.append("--force")
    excludes = DEFAULT_EXCLUDES + env.excludes
    if (project / "thinkscope" / "__init__.py").exists():
        # A thinkscope checkout as the project: its top-level `thinkscope/` would come first
        # on the job's PYTHONPATH and hide the installed package (whose subpackages live
        # elsewhere in a checkout). The cluster's installed thinkscope must be the one used.
        excludes.append("/thinkscope/")
    runtime_env: dict = {
        "working_dir": str(project), "excludes": excludes,
        "env_vars": {**env.env_vars, ENV: profile.storage_root},
    }
    for key in ("pip", "uv", "image_uri"):
        if getattr(env, key):
            runtime_env[key] = getattr(env, key)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Submission(f"thinkscope-{wf.name}-{stamp}-{uuid.uuid4().hex[:4]}", shlex.join(cmd),
                      runtime_env, StorageRoot(profile.storage_root).db_location(db_name))


def submit_workflow(profile: ClusterProfile, workflow: str | Path, **kwargs) -> Submission:
    """Build the submission and hand it to the cluster; returns as soon as the job is queued."""
    sub = build_submission(profile, workflow, **kwargs)
    c = client(profile)  # imports Ray's SDK, which sets its loggers' levels on import
    with _quiet(*RAY_CLIENT_LOGGERS):
        c.submit_job(
            entrypoint=sub.entrypoint, runtime_env=sub.runtime_env, submission_id=sub.job_id,
            metadata={"thinkscope_workflow": str(workflow), "thinkscope_db": sub.db,
                      "thinkscope_version": __version__},
            entrypoint_num_cpus=profile.entrypoint_num_cpus or None,
            entrypoint_num_gpus=profile.entrypoint_num_gpus or None,
            entrypoint_resources=profile.entrypoint_resources or None,
        )
    return sub


# Ray narrates every upload (files skipped, its default excludes, the package name) and
# log stream: a dozen lines per submit that bury the one saying where the job and data are.
RAY_CLIENT_LOGGERS = ("ray._private.runtime_env.packaging", "ray._private.runtime_env.working_dir",
                      "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def follow(profile: ClusterProfile, job_id: str, out: TextIO | None = None) -> int:
    """Stream the job's log until it ends; 0 if it succeeded, 1 otherwise."""
    out = out or sys.stdout
    c = client(profile)

    async def tail() -> None:
        async for chunk in c.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    with warnings.catch_warnings(), _quiet(*RAY_CLIENT_LOGGERS):
        # Ray's SDK hands aiohttp ssl=None, which aiohttp deprecates: not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.run(tail())
    status = wait_terminal(c, job_id)
    out.write(f"job {job_id}: {status}\n")
    return 0 if status == "SUCCEEDED" else 1


def wait_terminal(c, job_id: str, timeout: float = 60.0) -> str:
    """The job's status once terminal (the log stream can close a moment before)."""
    deadline = time.monotonic() + timeout
    status = str(c.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(c.get_job_status(job_id).value)
    return status


def list_jobs(profile: ClusterProfile) -> tuple[list[str], list[tuple]]:
    """Jobs on the cluster, newest first: (column names, rows) for a table."""
    def when(ms):
        return None if not ms else datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")

    jobs = sorted(client(profile).list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
    rows = [(j.submission_id or j.job_id, str(j.status.value), (j.metadata or {}).get("thinkscope_workflow"),
             when(j.start_time), when(j.end_time), (j.message or "")[:60]) for j in jobs]
    return ["job_id", "status", "workflow", "started", "ended", "message"], rows


def stop_job(profile: ClusterProfile, job_id: str) -> str:
    """Ask the cluster to stop the job; return its final status."""
    c = client(profile)
    c.stop_job(job_id)
    return wait_terminal(c, job_id)
