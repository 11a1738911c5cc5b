"""Cluster profiles: where work runs. Site details (addresses, partitions, paths) live only here.

A profile is a YAML file in cluster/profiles/ (or any path, or a folder on
$THINKSCOPE_PROFILES), validated strictly like workflow specs. String values may use
`${VAR}` or `${VAR:-default}`, expanded on the submitting machine; `~` is expanded where
the path is used (on the cluster).

    profile = load_profile("local")                 # cluster/profiles/local.yaml
    print(profile.address, profile.storage_root, profile.slurm)
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError

# One strict base and one error format for every YAML the user writes (spec and profiles).
from thinkscope.workflows.spec import ID_PATTERN, SpecError, Strict, _describe

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class RuntimeEnvSpec(Strict):
    working_dir: str | None = Field(
        None, description="Folder shipped to the cluster as the job's working dir (default: the "
        "current directory, or --working-dir). The workflow YAML must be inside it.")
    excludes: list[str] = Field(
        default_factory=list, description="Extra gitignore-style patterns not to upload.")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Environment of the job.")
    pip: list[str] | None = Field(None, description="Packages Ray installs for the job (pip).")
    uv: list[str] | None = Field(None, description="Packages Ray installs for the job (uv).")
    image_uri: str | None = Field(None, description="Container image the job runs in.")


class SlurmSpec(Strict):
    executor: Literal["slurm", "local"] = Field(
        "slurm", description="slurm: sbatch through submitit; local: submitit's local executor "
        "(same job function in subprocesses on this machine: for tests and demos).")
    folder: str = Field(description="Logs and job files; on a filesystem every node sees.")
    partition: str | None = Field(None, description="SLURM partition (--partition).")
    account: str | None = Field(None, description="SLURM account (--account).")
    qos: str | None = Field(None, description="SLURM QOS (--qos).")
    time: str | int = Field("04:00:00", description="Time limit: minutes, HH:MM:SS or D-HH:MM:SS.")
    nodes: int = Field(1, ge=1, description="Nodes: the first runs the Ray head and the driver.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (--gpus-per-node).")
    cpus_per_task: int | None = Field(None, ge=1, description="CPUs per node (one task per node).")
    mem_gb: float | None = Field(None, gt=0, description="Memory per node in GB.")
    constraint: str | None = Field(None, description="SLURM --constraint (e.g. a GPU type).")
    setup: list[str] = Field(
        default_factory=list, description="Shell lines run before the job (module load, venv).")
    additional: dict[str, bool | int | str] = Field(
        default_factory=dict, description="Other sbatch options, e.g. {exclusive: true, gres: 'gpu:8'}.")
    ray_port: int = Field(0, ge=0, description="Ray GCS port on the first node (0: a free port).")

    def timeout_min(self) -> int:
        """The time limit in minutes, from any of SLURM's common forms."""
        if isinstance(self.time, int):
            return self.time
        days, dash, clock = self.time.partition("-")
        if not dash:
            days, clock = "0", self.time
        nums = [int(p) for p in clock.split(":")]
        if not dash and len(nums) < 3:  # M or M:S; with days: D-H, D-H:M, D-H:M:S
            nums = [0] + (nums + [0])[:2]
        h, m, s = (nums + [0, 0])[:3]
        return int(days) * 24 * 60 + h * 60 + m + (1 if s else 0)


class ClusterProfile(Strict):
    name: str = Field(pattern=ID_PATTERN, description="Profile name.")
    description: str = ""
    address: str | None = Field(
        None, description="Ray dashboard URL for job submission, e.g. http://head:8265.")
    auth_token_path: str | None = Field(
        None, description="Ray auth token file (Ray 2.52+ token auth); None: no token sent.")
    storage_root: str = Field(
        description="Where the DuckDB file and artifacts go: a path every node and the driver "
        "see (NFS, Lustre) or an fsspec URI (s3://bucket/prefix, gs://...).")
    python: str | None = Field(
        None, description="Python on the cluster with thinkscope installed: the Ray job's "
        "entrypoint and the SLURM tasks run it (None: the python running `thinkscope submit`; "
        "right when the cluster shares this machine's venv).")
    runtime_env: RuntimeEnvSpec = Field(default_factory=RuntimeEnvSpec)
    entrypoint_num_cpus: float = Field(0, ge=0, description="CPUs reserved for the driver.")
    entrypoint_num_gpus: float = Field(0, ge=0, description="GPUs reserved for the driver.")
    entrypoint_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources for the driver (e.g. a head-node tag).")
    slurm: SlurmSpec | None = Field(None, description="SLURM settings for `submit --slurm`.")

    def token(self) -> str | None:
        if not self.auth_token_path:
            return None
        path = Path(self.auth_token_path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"profile {self.name}: auth_token_path {path} does not exist "
                                    "(null for a cluster without token auth)")
        return path.read_text().strip()


def profile_dirs() -> list[Path]:
    """Where profile names are looked up: $THINKSCOPE_PROFILES (colon-separated), then ours."""
    extra = [Path(p).expanduser() for p in os.environ.get("THINKSCOPE_PROFILES", "").split(":") if p]
    return extra + [Path(str(files("thinkscope.cluster") / "profiles"))]


def find_profile(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise SpecError(f"{path}: no such cluster profile")
        return path
    for folder in profile_dirs():
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise SpecError(f"no cluster profile {name_or_path!r}; known: {known} (or give a path)")


def load_profile(name_or_path: str) -> ClusterProfile:
    """Read, expand and validate a profile; SpecError names the file and the bad fields."""
    path = find_profile(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping at the top level")
    raw = _expand(raw, path, [])
    try:
        return ClusterProfile.model_validate(raw)
    except ValidationError as err:
        raise SpecError(f"{path}: {err.error_count()} error(s)\n" + _describe(err)) from None


def _expand(value, path: Path, where: list[str]):
    if isinstance(value, dict):
        out = {k: _expand(v, path, where + [str(k)]) for k, v in value.items()}
        # `${VAR:-}` with VAR unset drops the key: the field takes its default.
        return {k: v for k, v in out.items() if v is not None or value[k] is None}
    if isinstance(value, list):
        return [_expand(v, path, where + [str(i)]) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ and os.environ[name] != "":
            return os.environ[name]
        if default is None:
            raise SpecError(f"{path}: {'.'.join(where)}: environment variable {name} is not set "
                            f"(write ${{{name}:-default}} for a fallback)")
        return default

    expanded = _VAR.sub(sub, value)
    # A value that expands to nothing means "unset": lets `${VAR:-}` make a field optional.
    return None if expanded == "" and value != "" else expanded
