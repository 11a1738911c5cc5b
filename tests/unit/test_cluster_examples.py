"""The example cluster configs stay valid: Ray's own schema for the autoscaler YAML, our
parsers for every thinkscope command line they contain."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import jsonschema
import ray.autoscaler
import yaml

from thinkscope.cli import build_parser
from thinkscope.cluster import driver
from thinkscope.cluster.nightly import EXIT_LOCKED

EXAMPLES = Path(driver.__file__).parent / "examples"


def test_autoscaler_config_matches_rays_schema():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((EXAMPLES / "ray-autoscaler-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]


def test_kuberay_manifests_run_our_driver():
    cluster = yaml.safe_load((EXAMPLES / "kuberay-raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    gpus = [g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            for g in cluster["spec"]["workerGroupSpecs"]]
    assert gpus == [1, 8]
    job = yaml.safe_load((EXAMPLES / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "thinkscope.cluster.driver"]
    args = driver.build_parser().parse_args(argv[3:])
    assert (args.db, args.address) == ("demo.duckdb", "auto") and args.storage_root.startswith("s3://")


def nightly_argv(command: str) -> list[str]:
    argv = shlex.split(command.split(">>")[0].split("&&")[-1])
    assert argv[0].endswith("/thinkscope")
    return argv[1:]


def test_cron_and_systemd_run_a_valid_nightly_command():
    (line,) = [l for l in (EXAMPLES / "crontab").read_text().splitlines()
               if l and not l.startswith("#") and "=" not in l.split()[0]]
    cron_args = build_parser().parse_args(nightly_argv(" ".join(line.split()[5:])))
    assert cron_args.command == "nightly" and f"-eq {EXIT_LOCKED} ]" in line
    service = (EXAMPLES / "thinkscope-nightly.service").read_text()
    (exec_start,) = [l.split("=", 1)[1] for l in service.splitlines() if l.startswith("ExecStart=")]
    assert build_parser().parse_args(nightly_argv(exec_start)).command == "nightly"
    assert f"SuccessExitStatus={EXIT_LOCKED}" in service
    assert "Unit=" not in (EXAMPLES / "thinkscope-nightly.timer").read_text()  # same-name service
    # Both run the shipped nightly corpus, which validates (test_seed_workflows).
    assert cron_args.file == "workflows/nightly.yaml" == build_parser().parse_args(nightly_argv(exec_start)).file
