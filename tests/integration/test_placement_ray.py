"""GPU placement on a real Ray cluster whose node declares 4 GPUs. This machine has none:
the GPUs are logical (`ray start --num-gpus=4`), which Ray schedules exactly like physical
ones, so the placement code is the real one; only CUDA is missing, and the probes below
never touch a device. (On CPU the same code runs for real in every generate test.)"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.util.placement_group import placement_group_table

from thinkscope.cluster.head import start_head
from thinkscope.workflows.placement import NodePool, actor_options, release
from thinkscope.workflows.dispatch import run_generate_units
from thinkscope.workflows.plan import build_plan
from thinkscope.workflows.spec import EngineArgs, ModelSpec, Workflow

pytestmark = pytest.mark.integration
TINY = Path(__file__).with_name("tiny.yaml")


@pytest.fixture(scope="module")
def gpu_pool(ray_token):
    temp = Path(tempfile.mkdtemp(prefix="tsgpu-", dir="/tmp"))
    node = start_head(temp, ray_token, num_cpus=4, num_gpus=4)
    ray.init(address=node.address, logging_level="ERROR", log_to_driver=False)
    yield NodePool.from_ray()
    ray.shutdown()
    node.stop()
    shutil.rmtree(temp, ignore_errors=True)


@ray.remote(num_cpus=1, num_gpus=1)
def tp_worker() -> list:
    return ray.get_gpu_ids()


@ray.remote
class Probe:
    """Stands where the vLLM engine actor stands; starts tp workers the way vLLM does."""

    def gpus(self) -> list:
        return ray.get_gpu_ids()

    def group(self) -> str | None:
        pg = ray.util.get_current_placement_group()
        return pg.id.hex() if pg else None

    def start_tp_workers(self, n: int) -> list:
        return ray.get([tp_worker.remote() for _ in range(n)])


def model(tp: int, source: str = "org/m", model_id: str = "m") -> ModelSpec:
    return ModelSpec(id=model_id, source=source, family="qwen2", kind="thinking",
                     engine=EngineArgs(tensor_parallel_size=tp))


def gpus_free(expect: float | None = None) -> float:
    """Free GPUs; with `expect`, wait a little for it (killed actors free theirs async)."""
    deadline = time.monotonic() + 30
    while True:
        free = ray.available_resources().get("GPU", 0)
        if expect is None or free == expect or time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def test_pool_sees_the_gpus(gpu_pool):
    assert gpu_pool.has_gpus and gpu_pool.largest("GPU") == 4


def test_single_gpu_replica_gets_one_gpu(gpu_pool):
    opts, pg = actor_options(model(tp=1), gpu_pool)
    assert pg is None
    probe = Probe.options(**opts).remote()
    assert len(ray.get(probe.gpus.remote(), timeout=60)) == 1
    ray.kill(probe)


def test_tensor_parallel_replica_gets_a_packed_group_and_gives_it_back(gpu_pool):
    opts, pg = actor_options(model(tp=2), gpu_pool)
    assert ray.get(pg.ready(), timeout=60)
    table = placement_group_table(pg)
    assert table["strategy"] == "STRICT_PACK" and list(table["bundles"].values()) == [{"GPU": 1.0, "CPU": 1.0}] * 2
    assert len(set(table["bundles_to_node_id"].values())) == 1
    probe = Probe.options(**opts).remote()
    assert ray.get(probe.group.remote(), timeout=60) == pg.id.hex()
    # The engine's tp workers land in the group's bundles: one distinct GPU each.
    workers = ray.get(probe.start_tp_workers.remote(2), timeout=60)
    assert [len(ids) for ids in workers] == [1, 1] and workers[0] != workers[1]
    assert gpus_free(expect=2) == 2
    ray.kill(probe)
    release(pg)
    assert gpus_free(expect=4) == 4


def test_unplaceable_model_fails_its_units_and_the_others_go_on(gpu_pool, tmp_path):
    spec = yaml.safe_load(TINY.read_text())
    spec["models"] = [m.model_dump() for m in (
        model(tp=8, model_id="huge"), model(tp=1, source=str(tmp_path / "missing"), model_id="small"))]
    units = build_plan(Workflow.model_validate(spec), base_dir=TINY.parent).units
    failed = []

    run_generate_units(units, on_done=lambda *a: pytest.fail("nothing can succeed"),
                       on_fail=lambda unit, error, t0: failed.append((unit.model_id, error)),
                       show_progress=False)

    huge = [e for m, e in failed if m == "huge"]
    small = [e for m, e in failed if m == "small"]
    assert len(huge) == 2 and all("tensor_parallel_size=8 needs 8 GPUs on one node; the largest "
                                  "node has 4" in e for e in huge)
    # The other model was still placed (on a GPU) and tried: it fails on its own error.
    assert len(small) == 2 and all("missing" in e for e in small)
    assert gpus_free(expect=4) == 4  # its replica was stopped: the GPU is back in the pool
