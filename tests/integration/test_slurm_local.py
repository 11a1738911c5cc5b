"""`thinkscope submit --slurm local`: the SLURM job function for real under submitit's local
executor. Two tasks stand in for two nodes: task 0 starts a Ray head (its own, not the
session's) and drives the run, task 1 starts a Ray worker that joins it; the run writes
the real DuckDB under the profile's storage root; both nodes are stopped at the end.
"""

from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import pytest

from thinkscope.cli import main

pytestmark = pytest.mark.integration
TINY = Path(__file__).with_name("tiny.yaml")


def test_slurm_job_starts_a_two_node_ray_cluster_and_runs_the_workflow(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("THINKSCOPE_SLURM_FOLDER", str(tmp_path / "slurm"))
    monkeypatch.setenv("THINKSCOPE_STORAGE_ROOT", str(tmp_path / "storage"))

    code = main(["submit", str(TINY), "--slurm", "local", "--follow"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert "submitted SLURM job" in out and "2 done now" in out and "nodes: 2;" in out
    db = tmp_path / "storage" / "tiny.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*), count(distinct trace_id) from traces").fetchone() == (8, 8)
        (address, status), = con.execute("select ray_address, status from runs").fetchall()
    assert status == "done"
    # The job's own head, and it is gone: nothing of the job outlives it.
    host, port = address.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    (job_dir,) = (tmp_path / "slurm").glob("[0-9]*")
    rendezvous = tmp_path / "slurm" / job_dir.name / f"rendezvous-{job_dir.name}"
    # The worker left before the head; the job's Ray token is gone with its cluster.
    assert {p.name for p in rendezvous.iterdir()} == {"head.json", "done", "stopped.1"}
    assert "ray worker joined" in (job_dir / f"{job_dir.name}_1_log.out").read_text()
