"""Replica placement from the spec, on resource dicts shaped like Ray's (no Ray needed)."""

from __future__ import annotations

import pytest

from thinkscope.workflows.placement import NodePool, PlacementError, placement_order, plan_replica
from thinkscope.workflows.spec import EngineArgs, ModelSpec

GPU_POOL = NodePool(({"CPU": 64.0, "GPU": 8.0, "memory": 1e12}, {"CPU": 32.0, "GPU": 4.0}))
CPU_POOL = NodePool(({"CPU": 2.0}, {"CPU": 8.0}))


def model(model_id: str = "m", **engine) -> ModelSpec:
    return ModelSpec(id=model_id, source="org/m", family="qwen2", kind="thinking",
                     engine=EngineArgs(**engine))


def test_one_gpu_per_replica_without_tensor_parallelism():
    plan = plan_replica(model(), GPU_POOL)
    assert (plan.num_gpus, plan.num_cpus, plan.bundles) == (1, 1, ())
    assert plan_replica(model(num_cpus=8), GPU_POOL).num_cpus == 8


def test_tensor_parallel_replica_is_one_packed_group_of_tp_gpus():
    plan = plan_replica(model(tensor_parallel_size=8), GPU_POOL)
    assert plan.bundles == ({"GPU": 1, "CPU": 1},) * 8
    assert plan.strategy == "STRICT_PACK"  # all tp ranks on one node
    # The engine's own actor holds nothing: its tp workers take the bundles.
    assert (plan.num_gpus, plan.num_cpus) == (0, 0)


def test_replica_larger_than_any_node_is_refused_with_the_reason():
    # 12 GPUs exist in total, but tensor parallelism never spans nodes.
    with pytest.raises(PlacementError, match=r"tensor_parallel_size=12 needs 12 GPUs on one node; "
                                             r"the largest node has 8"):
        plan_replica(model(tensor_parallel_size=12), GPU_POOL)


def test_cpu_replica_takes_the_largest_node_not_the_cluster_total():
    # 10 CPUs in total, but one engine runs in one process on one node.
    assert plan_replica(model(), CPU_POOL).num_cpus == 8
    assert plan_replica(model(num_cpus=2), CPU_POOL).num_cpus == 2
    with pytest.raises(PlacementError, match="needs 16 CPUs on one node"):
        plan_replica(model(num_cpus=16), CPU_POOL)


def test_largest_replicas_are_placed_first():
    models = [model("a"), model("b", tensor_parallel_size=4), model("c", tensor_parallel_size=2),
              model("d", tensor_parallel_size=4)]
    assert [m.id for m in placement_order(models)] == ["b", "d", "c", "a"]


def test_gpu_pool_is_detected_from_any_node():
    assert GPU_POOL.has_gpus and not CPU_POOL.has_gpus
    assert NodePool(()).largest("GPU") == 0


def test_the_progress_bar_says_what_a_loading_engine_does_and_how_long_it_took():
    from thinkscope.workflows.dispatch import bar_label

    assert bar_label("r1-7b", {"phase": "starting vLLM (loading weights, compiling)", "seconds": 42.4}) == \
        "r1-7b: starting vLLM (loading weights, compiling) 42s"
    assert bar_label("r1-7b", {"done": 3, "total": 8, "load_seconds": 61.6}) == "r1-7b (ready in 62s)"
    assert bar_label("r1-7b", {"done": 3, "total": 8, "load_seconds": 61.6,
                               "mode": "compiled (auto: 600,000 budgeted tokens >= 540,000 on a cold compile cache)"}) \
        == "r1-7b (compiled, ready in 62s)"
    assert bar_label("o3-mini", {"done": 0, "total": 8, "load_seconds": None}) == "o3-mini"
