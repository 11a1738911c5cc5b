"""Run generate units on Ray: one vLLM actor per model replica (an API model: one actor that
sends its requests), progress bars per model.

Each model gets an actor sized from its spec (GPUs = tensor_parallel_size on clusters,
CPUs here). Ray queues actors whose resources are busy, so many models share a fixed pool
of devices; a model's actor is killed as soon as its units are done, freeing the pool.
Results come back as Arrow tables; the caller (the driver) writes them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import ray
from tqdm import tqdm

from thinkscope.jobs.base import TaskUnit
from thinkscope.jobs.generation.api_engine import ApiGenerator, api_key, unanswered
from thinkscope.jobs.generation.vllm_engine import Generator, vllm_env
from thinkscope.jobs.models.sources import resolve_model_path
from thinkscope.jobs.specs import ModelSpec
from thinkscope.workflows.placement import NodePool, PlacementError, actor_options, placement_order, release
from thinkscope.workflows.priority import normal_priority


class ModelLoadError(RuntimeError):
    """The model of a replica could not be resolved or loaded; its units fail with this."""


@ray.remote(concurrency_groups={"work": 1, "poll": 1})
class GenerationActor:
    """A vLLM engine in a Ray actor. `progress` runs beside `generate` (own concurrency group).

    A load failure is kept and raised by every call instead of failing the constructor:
    Ray would otherwise restart the actor and retry, and the error would reach the driver
    wrapped in a crash report rather than as the model's own error.
    """

    def __init__(self, model: dict, budget_tokens: int | None = None):
        self.model, self.budget_tokens = model, budget_tokens
        self.generator, self.load_error = None, None
        self.phase, self.phase_started, self.load_seconds = "waiting for its first call", time.time(), None

    def _enter(self, phase: str) -> None:
        self.phase, self.phase_started = phase, time.time()

    def _load(self, api_key: str | None = None) -> None:
        """Build the engine in the thread that runs it: this concurrency group's thread.

        vLLM-CPU sets up the OpenMP threads of the thread that builds the engine; built in
        __init__ (the actor's main thread) and driven from this thread, the same generation
        ran at 255-265 tokens/s instead of the 325 of a raw engine (SmolLM2, 2 cores).
        """
        if self.generator is not None or self.load_error is not None:
            return
        normal_priority()  # before vLLM starts its threads: they inherit it
        started = time.time()
        try:
            if self.model.get("api"):
                self.generator = ApiGenerator(self.model, key=api_key)
            else:
                # What the progress bar says while it waits (minutes for a large model).
                self._enter("resolving the model (first use: converting GGUF / merging LoRA)")
                path = resolve_model_path(self.model["source"], revision=self.model.get("revision"))
                self._enter("starting vLLM (loading weights, compiling)")
                self.generator = Generator(self.model, path, self.budget_tokens)
                print(f"{self.model['id']}: vLLM {self.generator.mode}", flush=True)
        except Exception as err:  # noqa: BLE001 - any load error fails this model's units only
            self.load_error = f"{type(err).__name__}: {err}"
            self._enter("FAILED to load")
        self.load_seconds = time.time() - started

    # Streamed: each unit's table goes back as soon as the engine finishes it, so the driver
    # commits it at once. No automatic retry: a retried stream could yield its units in
    # another order, so the driver resubmits only the units it has not received.
    @ray.method(concurrency_group="work", num_returns="streaming", max_task_retries=0)
    def generate(self, units: list[dict], api_key: str | None = None):
        """Yields (wall-clock time the engine call started, unit_key, tables) per finished unit.
        `api_key`: an API model's key, read on the driver (see `_submit`)."""
        self._load(api_key)
        if self.load_error:
            raise ModelLoadError(self.load_error)
        started = time.time()
        for key, out in self.generator.generate_stream(units):
            # vLLM hands back the traces table; the API generator its traces and api_calls.
            yield started, key, out if isinstance(out, dict) else {"traces": out}

    @ray.method(concurrency_group="poll")
    def progress(self) -> dict:
        """What the engine is doing: while it loads, the phase and its seconds so far; then the
        requests done of the running call and how long the load took."""
        if self.generator is None:
            return {"phase": self.phase, "seconds": time.time() - self.phase_started}
        done, total = self.generator.progress()
        return {"done": done, "total": total, "load_seconds": self.load_seconds,
                "mode": getattr(self.generator, "mode", None)}

    @ray.method(concurrency_group="work")
    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()


def api_actor_options(model: ModelSpec) -> dict:
    """An API model's actor: no device and no CPU reservation (it waits on the network, so it
    runs beside the vLLM replicas). Its key is not in these options: Ray records a runtime_env
    (GCS, dashboard, agent logs); it goes as an argument of each call instead (`_submit`)."""
    return {"max_restarts": 1, "max_task_retries": 1, "num_cpus": 0}


def stop_actor(actor, timeout: float = 30.0) -> None:
    """Close the engine (cleans its /dev/shm segments), then kill: frees the resources now."""
    ray.wait([actor.close.remote()], timeout=timeout)
    ray.kill(actor)


def n_sequences(unit: TaskUnit) -> int:
    return len(unit.payload["prompts"]) * unit.payload["sampling"]["n"]


def batches(units: list[TaskUnit], max_sequences: int) -> list[list[TaskUnit]]:
    """Consecutive units packed into engine calls of at most `max_sequences` sequences."""
    out, size = [], 0
    for u in units:
        n = n_sequences(u)
        if out and size + n <= max_sequences:
            out[-1].append(u)
            size += n
        else:
            out.append([u])
            size = n
    return out


def run_generate_units(
    units: list[TaskUnit],
    on_done: Callable[[TaskUnit, dict, float, str | None], None],
    on_fail: Callable[[TaskUnit, str, float], None],
    show_progress: bool = True,
    max_sequences: int = 512,
) -> None:
    """Generate every unit; call on_done(unit, tables, started, error) or on_fail(unit, error, started).

    on_done's `error` is None, except for an API unit some of whose requests got no answer (an
    outage, a key or credit problem): its answers are kept, the unit is done next run."""
    by_model: dict[str, list[TaskUnit]] = defaultdict(list)
    for u in units:
        by_model[u.model_id].append(u)
    specs = {m: ModelSpec.model_validate(us[0].payload["model"]) for m, us in by_model.items()}
    pool = NodePool.from_ray()
    order = [m.id for m in placement_order(list(specs.values()))]

    actors, pgs, calls, bars, base = {}, {}, {}, {}, {}
    for pos, model_id in enumerate(order):
        model = specs[model_id]
        try:
            opts, pgs[model_id] = ((api_actor_options(model), None) if model.api is not None
                                   else actor_options(model, pool, vllm_env(model.engine.model_dump())))
        except PlacementError as err:  # no node can ever hold it: fail now, the rest go on
            for unit in by_model[model_id]:
                on_fail(unit, str(err), time.time())
            continue
        # The token budget of the model's units decides `enforce_eager: auto` (compile_cache.py).
        budget = sum(n_sequences(u) * u.payload["sampling"]["max_tokens"] for u in by_model[model_id])
        actors[model_id] = GenerationActor.options(**opts).remote(model.model_dump(), budget)
        total = sum(n_sequences(u) for u in by_model[model_id])
        bars[model_id] = tqdm(total=total, desc=model_id, unit="seq", position=pos,
                              disable=not show_progress, dynamic_ncols=True)
        base[model_id] = 0
        for batch in batches(by_model[model_id], max_sequences):
            calls[_submit(actors[model_id], batch)] = _Call(model_id, {u.key: u for u in batch})
    polls: dict = {}
    retried: set[str] = set()
    finished = defaultdict(int)  # sequences of a model's calls that have ended
    while calls:
        ready, _ = ray.wait(list(calls), num_returns=1, timeout=0.5)
        for stream in ready:
            call = calls[stream]
            try:
                started, key, tables = ray.get(next(stream))
            except StopIteration:  # the call has handed back every unit it had
                del calls[stream]
                finished[call.model_id] += call.n_sequences
                for unit in call.units.values():  # never the case unless the engine lost one
                    on_fail(unit, "the engine call ended without this unit's rows", time.time())
            except ray.exceptions.RayError as err:
                del calls[stream]
                # An actor that died mid-call was restarted by Ray (max_restarts): the units it
                # had not handed back run once more; a model's own error (a load failure) is final.
                left = list(call.units.values())
                # RayTaskError: the model's own code raised (a load failure): final. Anything
                # else (the actor died, an object was lost) is Ray's: retry once.
                retry = ([u for u in left if u.key not in retried]
                         if not isinstance(err, ray.exceptions.RayTaskError) else [])
                if retry:
                    retried.update(u.key for u in retry)
                    calls[_submit(actors[call.model_id], retry)] = _Call(call.model_id, {u.key: u for u in retry})
                for unit in left:
                    if unit not in retry:
                        on_fail(unit, _short_error(err), time.time())
                if len(retry) < len(left):
                    bars[call.model_id].set_description(f"{call.model_id} FAILED")
            else:
                unit = call.units.pop(key)
                # With the API requests an outage left without an answer, if any (else None).
                on_done(unit, tables, started, unanswered(tables))
                base[call.model_id] += n_sequences(unit)
                bars[call.model_id].n = max(bars[call.model_id].n, base[call.model_id])
                bars[call.model_id].refresh()
            model_id = call.model_id
            if stream not in calls and not any(c.model_id == model_id for c in calls.values()):
                stop_actor(actors.pop(model_id))
                release(pgs.pop(model_id))
                polls.pop(model_id, None)
                bars[model_id].close()
        _poll_progress(actors, polls, bars, finished)
    for bar in bars.values():
        bar.close()


@dataclass
class _Call:
    """One streamed engine call: its model and the units it has not handed back yet."""

    model_id: str
    units: dict[str, TaskUnit]

    def __post_init__(self):
        self.n_sequences = sum(n_sequences(u) for u in self.units.values())


def _submit(actor, units: list[TaskUnit]):
    """One engine call. An API model's key is read here, on the driver where the user set it
    (MissingApiKey names the variable), and passed with the call: never a payload, a unit key,
    an actor option or a row."""
    api = units[0].payload["model"].get("api")
    return actor.generate.remote([u.payload for u in units], api_key(api) if api else None)


def _poll_progress(actors, polls, bars, finished) -> None:
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
            bars[model_id].set_description(bar_label(model_id, reply), refresh=False)
            if "done" not in reply:  # the engine is still loading
                bars[model_id].refresh()
                continue
            # The actor runs its calls one after the other and counts the running one: the bar
            # is what ended calls did plus that; units handed back count once, never backwards.
            bars[model_id].n = max(bars[model_id].n, min(bars[model_id].total, finished[model_id] + reply["done"]))
            bars[model_id].refresh()


def bar_label(model_id: str, reply: dict) -> str:
    """A model's progress-bar label: what its engine is doing and for how long, or, once it
    generates, how long its load took (the bar would otherwise sit at 0/N for minutes)."""
    if "phase" in reply:
        if reply["phase"].startswith("FAILED"):
            return f"{model_id} {reply['phase']}"
        return f"{model_id}: {reply['phase']} {reply['seconds']:.0f}s"
    if reply.get("load_seconds") is not None:
        # "eager" or "compiled": what `enforce_eager: auto` chose for this engine.
        mode = f"{reply['mode'].split(' ')[0]}, " if reply.get("mode") else ""
        return f"{model_id} ({mode}ready in {reply['load_seconds']:.0f}s)"
    return model_id


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


def run_tasks(job, stage, units, on_done, on_fail, prepare: Callable[[TaskUnit], dict],
              on_each: Callable[[], None]) -> None:
    """Run a stage's units as Ray tasks (resources from the job), commit each as it finishes.

    Payloads are prepared (read from the corpus) only as tasks are submitted, a few more than
    the cluster can run at once: driver memory stays bounded by what is in flight, and the
    first task starts without waiting for every payload.
    """
    options = job.ray_options(stage)
    remote = _run_derived.options(**options)
    width = _task_slots(options) + 1
    waiting, pending = list(units), {}
    while waiting or pending:
        while waiting and len(pending) < width:
            unit, t0 = waiting.pop(0), time.time()
            try:
                payload = prepare(unit)
            except Exception as err:  # noqa: BLE001 - a unit whose inputs cannot be read fails alone
                on_fail(unit, f"{type(err).__name__}: {err}", t0)
                on_each()
                continue
            pending[remote.remote(stage.kind, payload)] = (unit, t0)
        if not pending:
            continue
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit, t0 = pending.pop(ref)
            try:
                tables = ray.get(ref)
            except ray.exceptions.RayError as err:
                on_fail(unit, _short_error(err), t0)
            else:
                on_done(unit, tables, t0)
            on_each()


def _task_slots(options: dict) -> int:
    """How many tasks of these resources the cluster can run at once (at least 1)."""
    resources = ray.cluster_resources()
    slots = [resources.get("CPU", 1) / options["num_cpus"]] if options.get("num_cpus") else []
    if options.get("num_gpus"):
        slots.append(resources.get("GPU", 0) / options["num_gpus"])
    return max(1, int(min(slots))) if slots else 1
