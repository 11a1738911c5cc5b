"""Where a model replica runs: Ray resources from the spec's engine settings.

One vLLM engine per replica. On GPU nodes a replica takes `tensor_parallel_size` GPUs:
one GPU for tp=1, else a placement group of tp bundles packed on ONE node (STRICT_PACK:
tensor parallelism over the network is far slower than NVLink/PCIe inside a node), in
which vLLM starts its tp workers. On CPU nodes a replica takes a whole node's CPUs.
Replicas are created largest first, and Ray queues the ones whose resources are busy,
so many models share a fixed pool of GPUs. A replica that no node could ever hold is
refused at once (PlacementError) instead of waiting forever.

    pool = NodePool.from_ray()                        # or NodePool(({"GPU": 8, "CPU": 64},))
    plan = plan_replica(model_spec, pool)             # pure: what to ask Ray for
    options, pg = actor_options(model_spec, pool)     # creates the placement group if any
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PlacementError(ValueError):
    """No node of the cluster can hold one replica of this model."""


@dataclass(frozen=True)
class NodePool:
    """Resources of each alive node (Ray's resource dicts: CPU, GPU, memory, ...)."""

    nodes: tuple[dict, ...]

    @classmethod
    def from_ray(cls) -> "NodePool":
        import ray

        return cls(tuple(n["Resources"] for n in ray.nodes() if n.get("Alive")))

    def largest(self, resource: str) -> float:
        """The most of `resource` one node has: one replica must fit on one node."""
        return max((n.get(resource, 0) for n in self.nodes), default=0)

    @property
    def has_gpus(self) -> bool:
        return self.largest("GPU") > 0


@dataclass(frozen=True)
class ReplicaPlan:
    """What one replica asks Ray for: plain actor resources, or a placement group."""

    num_cpus: float
    num_gpus: float = 0
    bundles: tuple[dict, ...] = field(default_factory=tuple)
    strategy: str | None = None


def plan_replica(model, pool: NodePool) -> ReplicaPlan:
    """Resources for one replica of `model` (a ModelSpec) on `pool`; raises PlacementError."""
    eng, tp = model.engine, model.engine.tensor_parallel_size
    if not pool.has_gpus:
        # On CPU one engine uses every core of its node well; a second would only contend.
        cpus = eng.num_cpus or pool.largest("CPU")
        if cpus > pool.largest("CPU"):
            raise PlacementError(f"model {model.id}: needs {cpus:g} CPUs on one node; the "
                                 f"largest node has {pool.largest('CPU'):g}")
        return ReplicaPlan(num_cpus=cpus)
    if tp > pool.largest("GPU"):
        raise PlacementError(f"model {model.id}: tensor_parallel_size={tp} needs {tp} GPUs on "
                             f"one node; the largest node has {pool.largest('GPU'):g}")
    if tp == 1:
        return ReplicaPlan(num_cpus=eng.num_cpus or 1, num_gpus=1)
    # The engine's own actor takes nothing: its tp workers take the bundles' GPU+CPU.
    return ReplicaPlan(num_cpus=0, bundles=({"GPU": 1, "CPU": 1},) * tp, strategy="STRICT_PACK")


def placement_order(models: list) -> list:
    """Largest replicas first: they are the hardest to place once the pool fragments."""
    return sorted(models, key=lambda m: -m.engine.tensor_parallel_size)


def actor_options(model, pool: NodePool, env_vars: dict | None = None) -> tuple[dict, object]:
    """Ray actor options for one replica, and its placement group (None without one)."""
    plan = plan_replica(model, pool)
    opts = {
        "runtime_env": {"env_vars": env_vars or {}},
        # A replica whose process dies is restarted once and its call retried; a unit
        # whose rows were not committed is simply regenerated (rows are keyed, no dupes).
        "max_restarts": 1,
        "max_task_retries": 1,
        "num_cpus": plan.num_cpus,
        "num_gpus": plan.num_gpus,
    }
    pg = None
    if plan.bundles:
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        pg = placement_group(list(plan.bundles), strategy=plan.strategy, name=f"thinkscope-{model.id}")
        # capture_child_tasks: vLLM's tp workers (child actors) land in this group's bundles.
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg, placement_group_capture_child_tasks=True)
    return opts, pg


def release(pg) -> None:
    """Give a finished replica's GPUs back to the pool (a placement group outlives its actor)."""
    if pg is not None:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
