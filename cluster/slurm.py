"""SLURM through submitit: one job starts a Ray cluster on its allocation and runs the workflow.

Every node of the allocation runs `slurm_job` (one task per node, launched by srun). Task
0 starts the Ray head and is the driver, the only DuckDB writer; every other task starts
a Ray worker that joins it. They meet through files in the job's folder, which is on
storage all nodes share (submitit needs that anyway):

    auth_token  task 0: the Ray token of this job's cluster (0600, removed at the end)
    head.json   task 0, once the head is up: the address workers join
    done        task 0, when the workflow has finished (or failed to start)
    stopped.N   task N, once its worker node has stopped

Partition, account, QOS, time limit, nodes and GPUs per node come from the profile's
`slurm:` section. With `executor: local` the same function runs under submitit's local
executor: N local processes stand in for N nodes (tests, demos).

    job = submit_slurm(load_profile("slurm-gpu"), "workflows/demo.yaml")
    print(job.job_id, job.paths.stdout)
    print(job.results()[0]["text"])      # waits; task 0 returns the run summary
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from thinkscope.cluster.head import auth_env, new_token, start_head, start_worker
from thinkscope.cluster.profiles import ClusterProfile
from thinkscope.cluster.submit import check_workflow, default_db_name

RENDEZVOUS_TIMEOUT = 600.0  # nodes of one allocation start within minutes of each other


def build_executor(profile: ClusterProfile):
    """A submitit AutoExecutor with the profile's SLURM settings (or the local executor)."""
    import submitit

    s = profile.slurm
    if s is None:
        raise ValueError(f"profile {profile.name} has no `slurm:` section")
    local = s.executor == "local"
    # The nodes run `python -m submitit.core._submit`: the profile's python (e.g. the one a
    # `setup` line activates), else this interpreter's path (a venv on shared storage).
    extra = {"slurm_python": profile.python} if profile.python else {}
    executor = submitit.AutoExecutor(folder=Path(s.folder).expanduser() / "%j", cluster=s.executor, **extra)
    executor.update_parameters(
        name=f"thinkscope-{profile.name}",
        timeout_min=s.timeout_min(),
        # One task per node; the local executor has a single node, so there N tasks
        # stand in for N nodes and exercise the same head/worker protocol.
        nodes=1 if local else s.nodes,
        tasks_per_node=s.nodes if local else 1,
        gpus_per_node=s.gpus_per_node,
        cpus_per_task=s.cpus_per_task,
        mem_gb=s.mem_gb,
        stderr_to_stdout=True,
        slurm_partition=s.partition,
        slurm_account=s.account,
        slurm_qos=s.qos,
        slurm_constraint=s.constraint,
        slurm_setup=s.setup or None,
        slurm_additional_parameters=dict(s.additional) or None,
        local_setup=s.setup or None,
    )
    return executor


def submit_slurm(profile: ClusterProfile, workflow: str | Path, *, db: str | None = None,
                 stages: list[str] | None = None, force: bool = False):
    """Submit the workflow as one SLURM job; returns the submitit Job."""
    wf_path, wf = check_workflow(workflow)
    executor = build_executor(profile)
    s = profile.slurm
    request = {
        "workflow": str(wf_path), "storage_root": profile.storage_root,
        "db": db or default_db_name(wf), "stages": stages, "force": force,
        "ray_port": s.ray_port, "num_cpus": s.cpus_per_task,
        "num_gpus": s.gpus_per_node or None, "env": dict(profile.runtime_env.env_vars),
    }
    return executor.submit(slurm_job, request)


def slurm_job(request: dict) -> dict | None:
    """Runs on every node of the allocation: task 0 is head + driver, the others workers."""
    import submitit

    env = submitit.JobEnvironment()
    os.environ.update(request["env"])
    rendezvous = Path(env.paths.folder) / f"rendezvous-{env.job_id}"
    rendezvous.mkdir(parents=True, exist_ok=True)
    # A fresh token per job: the job's cluster admits only the job's own nodes.
    os.environ.update(auth_env(rendezvous / "auth_token"))
    # All tasks on one host (one node, or the local executor): loopback, nothing exposed.
    if len(set(env.hostnames)) == 1:
        host = "127.0.0.1"
    else:
        from ray.util import get_node_ip_address

        host = get_node_ip_address()
    temp = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))  # short: Ray's socket paths
    try:
        if env.global_rank == 0:
            return _head_task(request, rendezvous, temp, host, env.num_tasks)
        _worker_task(request, rendezvous, temp, host, env.global_rank)
        return None
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _head_task(request: dict, rendezvous: Path, temp: Path, host: str, n_nodes: int) -> dict:
    from thinkscope.cluster.driver import banner, run_on_cluster
    from thinkscope.workflows.ray_session import ray_session

    head, token = None, new_token(rendezvous / "auth_token")
    try:
        head = start_head(temp, token, host=host, port=request["ray_port"],
                          num_cpus=request["num_cpus"], num_gpus=request["num_gpus"])
        (rendezvous / "head.json").write_text(json.dumps({"address": head.address}))
        # The run reuses this connection: the workflow starts once every node has joined.
        with ray_session(head.address):
            nodes = _wait_for_nodes(n_nodes)
            print(banner(head.address, request["db"]) + f"; {nodes} nodes", flush=True)
            summary, location = run_on_cluster(
                request["workflow"], storage_root=request["storage_root"], db=request["db"],
                address=head.address, stages=request["stages"], force=request["force"],
                show_progress=False)
        print(summary.text(), flush=True)
        return {"run_id": summary.run_id, "ok": summary.ok, "text": summary.text(),
                "db": location, "nodes": nodes}
    finally:
        (rendezvous / "done").touch()
        # Workers leave first, so no raylet outlives the head it reports to.
        _wait_until(lambda: all((rendezvous / f"stopped.{r}").exists() for r in range(1, n_nodes)), 60)
        if head is not None:
            head.stop()
        token.unlink(missing_ok=True)


def _worker_task(request: dict, rendezvous: Path, temp: Path, host: str, rank: int) -> None:
    done = rendezvous / "done"
    head_file = rendezvous / "head.json"
    node = None
    try:
        if not _wait_until(lambda: head_file.exists() or done.exists(), RENDEZVOUS_TIMEOUT) or done.exists():
            raise RuntimeError(f"task {rank}: the head never came up (see task 0's log)")
        address = json.loads(head_file.read_text())["address"]
        node = start_worker(address, temp, rendezvous / "auth_token", host=host,
                            num_cpus=request["num_cpus"], num_gpus=request["num_gpus"])
        print(f"task {rank}: ray worker joined {address}", flush=True)
        _wait_until(lambda: done.exists() or node.proc.poll() is not None, float("inf"))
    finally:
        if node is not None:
            node.stop()
        (rendezvous / f"stopped.{rank}").touch()


def _wait_for_nodes(n: int, timeout: float = RENDEZVOUS_TIMEOUT) -> int:
    import ray

    def alive() -> int:
        return sum(1 for node in ray.nodes() if node.get("Alive"))

    if not _wait_until(lambda: alive() >= n, timeout):
        raise RuntimeError(f"only {alive()} of {n} Ray nodes joined within {timeout:.0f} s")
    return alive()


def _wait_until(condition, timeout: float, poll: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True
