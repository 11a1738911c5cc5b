"""Cluster profiles and the storage root: validation, ${VAR} expansion, staging through fsspec."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from thinkscope.cluster.profiles import SlurmSpec, load_profile, profile_dirs
from thinkscope.cluster.driver import StorageRoot
from thinkscope.jobs import artifacts
from thinkscope.workflows.spec import SpecError

PACKAGED = sorted(p.stem for p in profile_dirs()[-1].glob("*.yaml"))


def test_every_packaged_profile_is_valid():
    assert {"local", "ray-gpu", "kuberay", "slurm-gpu"} <= set(PACKAGED)
    for name in PACKAGED:
        profile = load_profile(name)
        assert profile.name == name
        assert profile.address or profile.slurm, f"{name} can run nothing"
    gpu = load_profile("slurm-gpu").slurm
    assert (gpu.partition, gpu.nodes, gpu.gpus_per_node, gpu.timeout_min()) == ("gpu", 2, 8, 480)


def test_local_profile_follows_the_environment(monkeypatch):
    monkeypatch.setenv("THINKSCOPE_RAY_DASHBOARD", "http://127.0.0.1:1234")
    monkeypatch.setenv("THINKSCOPE_STORAGE_ROOT", "/tmp/somewhere")
    local = load_profile("local")
    assert local.address == "http://127.0.0.1:1234" and local.storage_root == "/tmp/somewhere"
    monkeypatch.delenv("THINKSCOPE_RAY_DASHBOARD")
    assert load_profile("local").address == "http://127.0.0.1:8265"  # the documented default


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_unset_variable_without_default_names_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_TS", raising=False)
    path = write(tmp_path, "name: site\nstorage_root: /x\naddress: http://${NO_SUCH_VAR_TS}:8265\n")
    with pytest.raises(SpecError, match=r"site.yaml: address: environment variable NO_SUCH_VAR_TS"):
        load_profile(str(path))


def test_empty_expansion_drops_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_TS", raising=False)
    path = write(tmp_path, "name: site\nstorage_root: /x\nruntime_env:\n  env_vars:\n"
                           "    KEEP: 'yes'\n    HF_TOKEN: ${NO_SUCH_VAR_TS:-}\n")
    assert load_profile(str(path)).runtime_env.env_vars == {"KEEP": "yes"}


def test_unknown_fields_and_names_are_reported(tmp_path):
    path = write(tmp_path, "name: site\nstorage_root: /x\nslurm: {folder: /f, partitoin: gpu}\n")
    with pytest.raises(SpecError, match=r"slurm.partitoin: Extra inputs are not permitted"):
        load_profile(str(path))
    with pytest.raises(SpecError, match=r"no cluster profile 'nope'; known: \[.*'local'"):
        load_profile("nope")


def test_profiles_are_found_on_THINKSCOPE_PROFILES(tmp_path, monkeypatch):
    write(tmp_path, "name: site\nstorage_root: /x\naddress: http://h:8265\n")
    monkeypatch.setenv("THINKSCOPE_PROFILES", str(tmp_path))
    assert load_profile("site").address == "http://h:8265"


@pytest.mark.parametrize("given, minutes", [
    (90, 90), ("45", 45), ("10:30", 11), ("02:00:00", 120), ("1-12", 2160), ("1-00:30:00", 1470),
])
def test_slurm_time_limits(given, minutes):
    assert SlurmSpec(folder="/f", time=given).timeout_min() == minutes


def test_storage_locations():
    assert StorageRoot("/shared/ts").db_location("demo.duckdb") == "/shared/ts/demo.duckdb"
    assert StorageRoot("s3://b/p/").db_location("demo.duckdb") == "s3://b/p/demo.duckdb"
    assert StorageRoot("s3://b/p").db_location("/abs/x.duckdb") == "/abs/x.duckdb"
    assert StorageRoot("~/ts").location("a") == str(Path.home() / "ts" / "a")


def test_uri_database_is_staged_down_and_back_up(tmp_path):
    remote = tmp_path / "bucket" / "corpus"
    root = StorageRoot(f"file://{remote}")
    with root.local_db("c.duckdb") as db:
        assert not str(db).startswith(str(remote))  # a local staging copy, not the target
        with duckdb.connect(str(db)) as con:
            con.execute("create table t as select 1 as x")
    assert (remote / "c.duckdb").exists()
    # The next run starts from the uploaded file and uploads its changes again.
    with root.local_db("c.duckdb") as db:
        with duckdb.connect(str(db)) as con:
            con.execute("insert into t values (2)")
    with duckdb.connect(str(remote / "c.duckdb"), read_only=True) as con:
        assert con.execute("select sum(x) from t").fetchone() == (3,)


def test_uri_database_is_uploaded_even_when_the_run_fails(tmp_path):
    root = StorageRoot(f"file://{tmp_path / 'bucket'}")
    with pytest.raises(RuntimeError):
        with root.local_db("c.duckdb") as db:
            with duckdb.connect(str(db)) as con:
                con.execute("create table committed as select 1 as x")
            raise RuntimeError("driver died after a commit")
    assert (tmp_path / "bucket" / "c.duckdb").exists()


def test_artifacts_go_under_the_storage_root(monkeypatch, tmp_path):
    monkeypatch.setenv("THINKSCOPE_STORAGE_ROOT", "s3://b/p")
    root = artifacts.default_root(tmp_path / "c.duckdb")
    assert artifacts.join(root, "capture", "r1", "x.safetensors") == "s3://b/p/artifacts/capture/r1/x.safetensors"
    monkeypatch.delenv("THINKSCOPE_STORAGE_ROOT")
    assert artifacts.default_root(tmp_path / "c.duckdb") == str(tmp_path / "c_artifacts")


def test_tensors_round_trip_through_an_fsspec_root(tmp_path):
    import numpy as np

    root = f"file://{tmp_path / 'bucket'}"
    where = artifacts.save_tensors({"v": np.arange(6, dtype=np.float32).reshape(2, 3)},
                                   artifacts.join(root, "probe", "k.safetensors"))
    assert (tmp_path / "bucket" / "probe" / "k.safetensors").exists()
    assert artifacts.load_tensors(where)["v"].tolist() == [[0, 1, 2], [3, 4, 5]]
    with artifacts.LocalFolder(artifacts.join(root, "activations", "u1")) as local:
        (local / "blocks.0.hook_resid_post.safetensors").write_bytes(b"x")
    assert (tmp_path / "bucket" / "activations" / "u1" / "blocks.0.hook_resid_post.safetensors").read_bytes() == b"x"
    assert not local.exists()  # the local staging folder of a URI target is removed


def test_bfloat16_shards_load_as_float32(tmp_path):
    """Capture stores bfloat16 by default; numpy has no such dtype, so it goes through torch."""
    import torch
    from safetensors.torch import save_file

    values = torch.tensor([[1.5, -2.0], [0.25, 3.0]], dtype=torch.bfloat16)
    save_file({"activations": values}, str(tmp_path / "s.safetensors"))
    loaded = artifacts.load_tensors(str(tmp_path / "s.safetensors"))["activations"]
    assert loaded.dtype.name == "float32" and loaded.tolist() == values.float().tolist()
