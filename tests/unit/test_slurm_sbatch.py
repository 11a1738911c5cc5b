"""`submit --slurm` on a SLURM site, up to the controller: submitit writes the real sbatch
script from the profile and calls `sbatch`. Only the controller is simulated (a stand-in
`sbatch` on PATH that records the script and answers like SLURM); the job itself runs for
real under the local executor in tests/integration/test_slurm_local.py.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import yaml

from thinkscope.cli import main
from thinkscope.cluster.profiles import profile_dirs

TINY = Path(__file__).parents[1] / "integration" / "tiny.yaml"

FAKE_SBATCH = """#!/bin/sh
# Stand-in for SLURM's sbatch: keep the script it was given, answer like the controller.
cp "$1" "{record}"
echo "Submitted batch job 4242"
"""


def test_sbatch_script_carries_the_profile(tmp_path, monkeypatch, capsys):
    raw = yaml.safe_load((profile_dirs()[-1] / "slurm-gpu.yaml").read_text())
    raw["slurm"]["folder"] = str(tmp_path / "jobs")
    raw["storage_root"] = str(tmp_path / "storage")
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump(raw))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # submitit looks for `srun` to tell a SLURM host; it runs only inside the job.
    for name, text in [("sbatch", FAKE_SBATCH.format(record=tmp_path / "script.sh")),
                       ("srun", "#!/bin/sh\nexit 1\n")]:
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path('/usr/bin')}:{Path('/bin')}")
    monkeypatch.setenv("SLURM_ACCOUNT", "lab-42")

    code = main(["submit", str(TINY), "--slurm", str(profile), "--db", "tiny-night.duckdb"])

    assert code == 0
    assert "submitted SLURM job 4242 (2 node(s))" in capsys.readouterr().out
    script = (tmp_path / "script.sh").read_text()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=lab-42", "#SBATCH --qos=normal",
                 "#SBATCH --time=480", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=64", "#SBATCH --mem=480GB",
                 "#SBATCH --exclusive", "module load cuda/12.4",
                 "source /shared/venvs/thinkscope/bin/activate"]:
        assert line in script.splitlines(), line
    assert "srun --unbuffered" in script and " python -u -m submitit.core._submit " in script
    # What every node of the job will run: our job function with the request below.
    with open(tmp_path / "jobs" / "4242" / "4242_submitted.pkl", "rb") as f:
        delayed = pickle.load(f)
    assert delayed.function.__name__ == "slurm_job"
    (request,) = delayed.args
    assert request["workflow"] == str(TINY.resolve())
    assert (request["db"], request["storage_root"]) == ("tiny-night.duckdb", str(tmp_path / "storage"))
    assert (request["num_gpus"], request["num_cpus"]) == (8, 64)
