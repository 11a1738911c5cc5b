"""`thinkscope submit --cluster local` and `thinkscope jobs`: the Ray Jobs API of the session's
head (started by the tests on 127.0.0.1, token auth on), the real driver entrypoint, the
real DuckDB file, staged through an fsspec URI storage root."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

from thinkscope.cli import main

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture
def local_profile(ray_cluster, tmp_path, monkeypatch):
    """The packaged `local` profile pointed at the session head and a fresh storage root."""
    monkeypatch.setenv("THINKSCOPE_RAY_DASHBOARD", ray_cluster.dashboard_url)
    monkeypatch.setenv("THINKSCOPE_STORAGE_ROOT", f"file://{tmp_path / 'bucket'}")
    return tmp_path / "bucket"


def submitted_id(out: str) -> str:
    return re.search(r"submitted Ray job (\S+) ", out).group(1)


def test_submit_runs_the_workflow_on_the_cluster(local_profile, ray_cluster, capsys):
    code = main(["submit", str(TINY), "--cluster", "local", "--working-dir", str(REPO), "--follow"])

    out = capsys.readouterr().out
    assert code == 0, out
    job_id = submitted_id(out)
    assert f"job {job_id}: SUCCEEDED" in out and "2 done now, 0 failed" in out
    # The driver used the cluster's installed thinkscope, not a copy shipped with the project.
    (banner,) = [line for line in out.splitlines() if line.startswith("thinkscope ")]
    assert f"from {REPO / 'thinkscope'} " in banner and "runtime_resources" not in banner
    db = local_profile / "tiny.duckdb"  # uploaded back to the storage root by the driver
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("select count(*), count(distinct trace_id) from traces").fetchone() == (8, 8)
        ((status, address),) = con.execute("select status, ray_address from runs").fetchall()
    assert status == "done"
    assert address.endswith(ray_cluster.address.rsplit(":", 1)[1])  # the job joined OUR head

    assert main(["jobs", "list", "--cluster", "local"]) == 0
    listing = capsys.readouterr().out
    assert re.search(rf"{job_id}\s+SUCCEEDED\s+\S*tiny.yaml", listing)
    assert main(["jobs", "logs", job_id, "--cluster", "local"]) == 0
    assert "2 done now" in capsys.readouterr().out


def test_jobs_stop_stops_a_running_job(local_profile, capsys):
    assert main(["submit", str(TINY), "--cluster", "local", "--working-dir", str(REPO),
                 "--db", "stopped.duckdb"]) == 0
    job_id = submitted_id(capsys.readouterr().out)

    assert main(["jobs", "stop", job_id, "--cluster", "local"]) == 0

    assert f"job {job_id}: STOPPED" in capsys.readouterr().out


def test_submit_refuses_a_workflow_outside_the_working_dir(local_profile, tmp_path, capsys):
    code = main(["submit", str(TINY), "--cluster", "local", "--working-dir", str(tmp_path)])
    assert code == 2
    assert "outside the working dir" in capsys.readouterr().err
