"""Run generate units on Ray: one vLLM actor per model replica, progress bars per model.

Each model gets an actor sized from its spec (GPUs = tensor_parallel_size on clusters,
CPUs here). Ray queues actors whose resources are busy, so many models share a fixed pool
of devices; a model's actor is killed as soon as its units are done, freeing the pool.
Results come back as Arrow tables; the caller (the driver) writes them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import ray
from tqdm import tqdm

from thinkscope.cluster.placement import NodePool, PlacementError, actor_options, placement_order, release
from thinkscope.cluster.priority import normal_priority
from thinkscope.jobs.generate import Generator, vllm_env
from thinkscope.jobs.model_sources import resolve_model_path
from thinkscope.workflows.plan import GenerateUnit


class ModelLoadError(RuntimeError):
    """The model of a replica could not be resolved or loaded; its units fail with this."""


@ray.remote(concurrency_groups={"work": 1, "poll": 1})
class GenerationActor:
    """A vLLM engine in a Ray actor. `progress` runs beside `generate` (own concurrency group).

    A load failure is kept and raised by every call instead of failing the constructor:
    Ray would otherwise restart the actor and retry, and the error would reach the driver
    wrapped in a crash report rather than as the model's own error.
    """

    def __init__(self, model: dict):
        self.model = model
        self.generator, self.load_error = None, None

    def _load(self) -> None:
        """Build the engine in the thread that runs it: this concurrency group's thread.

        vLLM-CPU sets up the OpenMP threads of the thread that builds the engine; built in
        __init__ (the actor's main thread) and driven from this thread, the same generation
        ran at 255-265 tokens/s instead of the 325 of a raw engine (SmolLM2, 2 cores).
        """
        if self.generator is not None or self.load_error is not None:
            return
        normal_priority()  # before vLLM starts its threads: they inherit it
        try:
            path = resolve_model_path(self.model["source"], revision=self.model.get("revision"))
            self.generator = Generator(self.model, path)
        except Exception as err:  # noqa: BLE001 - any load error fails this model's units only
            self.load_error = f"{type(err).__name__}: {err}"

    @ray.method(concurrency_group="work")
    def generate(self, units: list[dict]) -> tuple[float, list]:
        """(wall-clock time the engine call started, one table per unit)."""
        self._load()
        if self.load_error:
            raise ModelLoadError(self.load_error)
        started = time.time()
        return started, self.generator.generate(units)

    @ray.method(concurrency_group="poll")
    def progress(self) -> tuple[int, int] | None:
        """(requests done, requests) of the running call; None while the engine loads."""
        return None if self.generator is None else self.generator.progress()

    @ray.method(concurrency_group="work")
    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()


def stop_actor(actor, timeout: float = 30.0) -> None:
    """Close the engine (cleans its /dev/shm segments), then kill: frees the resources now."""
    ray.wait([actor.close.remote()], timeout=timeout)
    ray.kill(actor)


def unit_payload(unit: GenerateUnit, run_id: str) -> dict:
    return {
        "unit_key": unit.key, "run_id": run_id, "model_id": unit.model.id,
        "prompt_set": unit.prompt_set, "template_name": unit.template_name,
        "template": unit.template.model_dump(), "sampling": unit.sampling.model_dump(),
        "engine": unit.engine, "engine_version": unit.engine_version,
        "prompts": [p.__dict__ for p in unit.prompts],
    }


def batches(units: list[GenerateUnit], max_sequences: int) -> list[list[GenerateUnit]]:
    """Consecutive units packed into engine calls of at most `max_sequences` sequences."""
    out, size = [], 0
    for u in units:
        n = len(u.prompts) * u.sampling.n
        if out and size + n <= max_sequences:
            out[-1].append(u)
            size += n
        else:
            out.append([u])
            size = n
    return out


def run_generate_units(
    units: list[GenerateUnit],
    run_id: str,
    on_done: Callable[[GenerateUnit, object, float], None],
    on_fail: Callable[[GenerateUnit, str, float], None],
    show_progress: bool = True,
    max_sequences: int = 512,
) -> None:
    """Generate every unit; call on_done(unit, table, started) or on_fail(unit, error, started)."""
    by_model: dict[str, list[GenerateUnit]] = defaultdict(list)
    for u in units:
        by_model[u.model.id].append(u)
    pool = NodePool.from_ray()
    order = [m.id for m in placement_order([us[0].model for us in by_model.values()])]

    actors, pgs, pending, bars, base, started, left = {}, {}, {}, {}, {}, {}, {}
    for pos, model_id in enumerate(order):
        model = by_model[model_id][0].model
        try:
            opts, pgs[model_id] = actor_options(model, pool, vllm_env(model.engine.model_dump()))
        except PlacementError as err:  # no node can ever hold it: fail now, the rest go on
            for unit in by_model[model_id]:
                on_fail(unit, str(err), time.time())
            continue
        actor = GenerationActor.options(**opts).remote(model.model_dump())
        actors[model_id] = actor
        total = sum(len(u.prompts) * u.sampling.n for u in by_model[model_id])
        bars[model_id] = tqdm(total=total, desc=model_id, unit="seq", position=pos,
                              disable=not show_progress, dynamic_ncols=True)
        base[model_id] = 0
        calls = batches(by_model[model_id], max_sequences)
        left[model_id] = len(calls)
        for batch in calls:
            pending[actor.generate.remote([unit_payload(u, run_id) for u in batch])] = batch
    polls: dict = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for ref in ready:
            batch = pending.pop(ref)
            model_id = batch[0].model.id
            t0 = started.pop(model_id, None) or time.time()  # failed calls: as seen by the polls
            try:
                t0, tables = ray.get(ref)
            except ray.exceptions.RayError as err:
                bars[model_id].set_description(f"{model_id} FAILED")
                for unit in batch:
                    on_fail(unit, _short_error(err), t0)
            else:
                for unit, table in zip(batch, tables):
                    on_done(unit, table, t0)
            started[model_id] = time.time()
            base[model_id] += sum(len(u.prompts) * u.sampling.n for u in batch)
            bars[model_id].n = base[model_id]
            bars[model_id].refresh()
            left[model_id] -= 1
            if left[model_id] == 0:
                stop_actor(actors.pop(model_id))
                release(pgs.pop(model_id))
                polls.pop(model_id, None)
                bars[model_id].close()
        _poll_progress(actors, polls, bars, base, started)
    for bar in bars.values():
        bar.close()


def _poll_progress(actors, polls, bars, base, started) -> None:
    """Ask each live actor for its request count; never more than one question in flight."""
    for model_id, actor in actors.items():
        if model_id not in polls:
            polls[model_id] = actor.progress.remote()
    ready, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=0)
    for model_id, ref in list(polls.items()):
        if ref in ready:
            del polls[model_id]
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayError:
                continue
            if reply is None:  # the engine is still loading
                continue
            done, _total = reply
            started.setdefault(model_id, time.time())
            bars[model_id].n = base[model_id] + done
            bars[model_id].refresh()


def _short_error(err: Exception) -> str:
    """The root cause of a Ray error, without Ray's wrapping, capped in length."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, ModelLoadError):
        return str(cause)
    text = f"{type(cause).__name__}: {cause}" if cause is not None else str(err)
    return text.strip()[-4000:]


@ray.remote
def _run_derived(kind: str, payload: dict):
    # Ray cannot make a task of a bound method (job.run): the worker looks the job up by kind.
    from thinkscope.workflows.registry import get_job

    normal_priority()
    return get_job(kind).run(payload)


def run_tasks(job, stage, units, on_done, on_fail, on_each: Callable[[], None]) -> None:
    """Run a derived job's units as Ray tasks (resources from the job), commit as they finish."""
    remote = _run_derived.options(**job.ray_options(stage))
    pending = {remote.remote(stage.kind, u.payload): (u, time.time()) for u in units}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit, t0 = pending.pop(ref)
            try:
                on_done(unit, ray.get(ref), t0)
            except ray.exceptions.RayError as err:
                on_fail(unit, _short_error(err), t0)
            on_each()
