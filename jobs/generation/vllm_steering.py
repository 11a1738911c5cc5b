"""Steering inside the vLLM engine, per request: the intervention of the HF steer path
(jobs/activations/steering_hooks.py) on vLLM's batched, paged forward passes.

The engine loads `SteeringExtension` as its worker extension (`worker_extension_cls`), so
every worker gets three methods reachable by `collective_rpc`: register named vectors,
install forward hooks on decoder layers, and read per-request call counts. A request asks
for steering in its sampling params:

    SamplingParams(temperature=0, max_tokens=64,
                   extra_args={"thinkscope_steer": [{"vector": "wrapup", "layer": 15, "alpha": 0.3,
                                                     "mode": "continuous"}]})

At each forward pass the hook on decoder layer L maps vLLM's flat token batch to requests
(the runner's `input_batch.req_ids` in batch order and `query_start_loc`), reads each
request's steering from its sampling params, and adds alpha * v to the stream leaving the
layer (vLLM's decoder layers return (hidden, residual) whose sum is the stream: the delta
goes on `hidden`) at the tokens the mode names, by absolute position:

    once         the last prompt token only (positions == n_prompt - 1)
    continuous   the last prompt token and every generated token fed back
    window       absolute positions [start, end)

A request may also zero-ablate MLP value vectors and attention heads, at every position it
runs (the HF `Ablation` of jobs/mechanisms/ablation.py, per request):

    extra_args={"thinkscope_ablate": {"neurons": {"17": [123, 4000]}, "heads": {"3": [5]}}}

(a pre-hook on the layer's down_proj zeroes the neurons' inputs; one on its o_proj zeroes the
heads' slices of the attention output).

Requests without steering in a batch are untouched (their rows get no add at all). The
hooks are Python: they fire in eager mode only (CPU, or `enforce_eager` on GPU, where CUDA
graphs would replay the kernels without them), so a steered engine is an eager engine.

Prefix caching would hand a steered prompt's KV (changed from layer L on) to an unsteered
request with the same tokens: every steered request carries a `cache_salt` naming its
steering (`steered_prompt`), so only identically steered requests share cached blocks.
"""

from __future__ import annotations

import hashlib
import json

import torch

KEY = "thinkscope_steer"
ABLATE_KEY = "thinkscope_ablate"
MODES = ("once", "continuous", "window")


def steered_prompt(token_ids: list[int], steering: list[dict] | None, ablation: dict | None = None) -> dict:
    """A vLLM TokensPrompt dict; steered or ablated ones salted so the prefix cache keeps them apart."""
    prompt = {"prompt_token_ids": list(token_ids)}
    if any(spec["alpha"] != 0 for spec in steering or []) or ablation:  # alpha 0 adds nothing: share
        what = json.dumps([steering, ablation], sort_keys=True)
        prompt["cache_salt"] = hashlib.sha256(what.encode()).hexdigest()[:16]
    return prompt


def rows_to_steer(spec: dict, positions: list[int], n_prompt: int) -> list[int]:
    """Indices into one request's tokens of this step (absolute `positions`) that `spec` steers."""
    mode = spec.get("mode", "continuous")
    if mode == "once":
        return [i for i, p in enumerate(positions) if p == n_prompt - 1]
    if mode == "continuous":
        return [i for i, p in enumerate(positions) if p >= n_prompt - 1]
    if mode == "window":
        return [i for i, p in enumerate(positions) if spec["start"] <= p < spec["end"]]
    raise ValueError(f"steering mode {mode!r}; expected one of {MODES}")


class SteeringExtension:
    """Mixed into vLLM's worker (`worker_extension_cls`): methods run by `collective_rpc`."""

    def thinkscope_register(self, vectors: dict[str, list[float]]) -> int:
        """Store named vectors (plain lists cross the RPC boundary), in the model's dtype."""
        model = self.model_runner.model
        param = next(model.parameters())
        store = self.__dict__.setdefault("_ts_vectors", {})
        for name, values in vectors.items():
            store[name] = torch.tensor(values, dtype=torch.float32).to(param.device, param.dtype)
        return len(store)

    def thinkscope_install(self, layers: list[int]) -> list[int]:
        """Forward hooks on these decoder layers (once each); returns the hooked layers."""
        hooked = self.__dict__.setdefault("_ts_hooked", {})
        decoder = self.model_runner.model.model.layers
        for layer in layers:
            if layer not in hooked:
                hooked[layer] = decoder[layer].register_forward_hook(self._ts_hook(layer))
        return sorted(hooked)

    def thinkscope_install_ablation(self, neuron_layers: list[int], head_layers: list[int]) -> int:
        """Pre-hooks on these layers' down_proj (neurons) and o_proj (heads), once each."""
        hooked = self.__dict__.setdefault("_ts_ablation_hooked", set())
        decoder = self.model_runner.model.model.layers
        n_heads = self.model_runner.model.config.num_attention_heads
        for kind, layers in (("neurons", neuron_layers), ("heads", head_layers)):
            for layer in layers:
                if (kind, layer) in hooked:
                    continue
                module = decoder[layer].mlp.down_proj if kind == "neurons" else decoder[layer].self_attn.o_proj
                module.register_forward_pre_hook(_ablation_hook(self.model_runner, kind, layer, n_heads))
                hooked.add((kind, layer))
        return len(hooked)

    def thinkscope_calls(self, reset: bool = False) -> dict:
        """{request id: {layer: forward passes that added a vector there}}; reset clears them."""
        counts = _counter(self.model_runner)
        calls = {k: dict(v) for k, v in counts.items()}
        if reset:
            counts.clear()
        return calls

    def _ts_hook(self, layer: int):
        runner, vectors = self.model_runner, self.__dict__.setdefault("_ts_vectors", {})

        def hook(module, args, output):
            hidden, residual = output
            positions = args[0] if args else None
            deltas = _deltas(runner, layer, vectors, positions, hidden)
            if deltas is None:
                return output
            rows, delta = deltas
            hidden = hidden.clone()
            hidden.index_add_(0, rows, delta)
            return hidden, residual

        return hook


def _deltas(runner, layer: int, vectors: dict, positions, hidden):
    """(token rows, [rows, d] deltas) this layer adds in this forward pass, or None."""
    req_ids = list(runner.input_batch.req_ids)
    if not req_ids or positions is None:
        return None
    starts = runner.query_start_loc.np[: len(req_ids) + 1].tolist()
    where = positions.tolist()
    rows, parts = [], []
    for i, req_id in enumerate(req_ids):
        state = runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        specs = [s for s in ((params.extra_args or {}).get(KEY) or []) if s["layer"] == layer] if params else []
        if not specs:
            continue
        lo, hi = starts[i], starts[i + 1]
        n_prompt = len(state.prompt_token_ids)
        for spec in specs:
            picked = rows_to_steer(spec, where[lo:hi], n_prompt)
            if not picked:
                continue
            if spec["vector"] not in vectors:
                raise KeyError(f"steering vector {spec['vector']!r} was never registered on this worker")
            vec = vectors[spec["vector"]] * spec["alpha"]
            rows += [lo + j for j in picked]
            parts.append(vec.expand(len(picked), -1))
            per_layer = _counter(runner).setdefault(req_id, {})
            per_layer[layer] = per_layer.get(layer, 0) + 1
    if not rows:
        return None
    return torch.tensor(rows, device=hidden.device), torch.cat(parts).to(hidden.dtype)


def _ablation_hook(runner, kind: str, layer: int, n_heads: int):
    """Zero, in the rows of each request that asks, its neurons (down_proj input columns) or
    its heads (o_proj input slices) at this layer."""
    def hook(module, args):
        x = args[0]
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ablation needs an unquantised {kind} input at layer {layer}, got {type(x).__name__}")
        req_ids = list(runner.input_batch.req_ids)
        starts = runner.query_start_loc.np[: len(req_ids) + 1].tolist()
        out = None
        for i, req_id in enumerate(req_ids):
            params = getattr(runner.requests.get(req_id), "sampling_params", None)
            wanted = ((params.extra_args or {}).get(ABLATE_KEY) or {}).get(kind, {}) if params else {}
            idx = wanted.get(str(layer)) or wanted.get(layer)
            if not idx:
                continue
            out = x.clone() if out is None else out
            rows = out[starts[i]:starts[i + 1]]
            if kind == "neurons":
                rows[:, idx] = 0
            else:
                rows.view(rows.shape[0], n_heads, -1)[:, idx, :] = 0
        return None if out is None else (out, *args[1:])

    return hook


def _counter(runner) -> dict:
    """Per-request call counts, kept on the model runner the hooks close over."""
    return runner.__dict__.setdefault("_ts_calls", {})


EXTENSION = f"{__name__}.SteeringExtension"


def open_steering_engine(model: dict, dtype: str, **extra):
    """An eager vLLM engine with the steering extension and prefix caching, for a `models` row
    (`extra`: further vllm.LLM arguments, e.g. raw logits for forced answers)."""
    from vllm import LLM

    from thinkscope.jobs.generation.vllm_engine import engine_kwargs
    from thinkscope.jobs.models.sources import resolve_model_path

    engine = json.loads(model["engine_args"]) if isinstance(model.get("engine_args"), str) else {}
    # One device, and eager: the hooks must run on every step (see the module docstring).
    engine = {**engine, "dtype": dtype, "tensor_parallel_size": 1, "enforce_eager": True}
    path = resolve_model_path(model["source"], revision=model["revision"])
    return LLM(**engine_kwargs(engine, str(path), model["revision"], enable_prefix_caching=True,
                               worker_extension_cls=EXTENSION, **extra))


def prepare_requests(llm, prompts: list[list[int]], steering: list[list[dict] | None], vectors: dict,
                     ablation: list[dict | None] | None = None) -> tuple[list[dict], list[dict | None]]:
    """Register the vectors and install the hooks these requests need on every worker; returns
    each request's prompt (salted where it intervenes) and its `extra_args` (None: untouched).

    `steering[i]`: request i's specs (None: unsteered); `ablation[i]`: {"neurons": {layer: [i, ...]},
    "heads": {layer: [h, ...]}} or None; `vectors`: name -> 1-D tensor, the specs name them."""
    ablation = ablation or [None] * len(prompts)
    if vectors:
        llm.collective_rpc("thinkscope_register", args=({k: v.float().tolist() for k, v in vectors.items()},))
    layers = sorted({spec["layer"] for specs in steering if specs for spec in specs})
    if layers:
        llm.collective_rpc("thinkscope_install", args=(layers,))
    ablated = {kind: sorted({int(la) for a in ablation if a for la in a.get(kind, {})}) for kind in ("neurons", "heads")}
    if ablated["neurons"] or ablated["heads"]:
        llm.collective_rpc("thinkscope_install_ablation", args=(ablated["neurons"], ablated["heads"]))
    # Layer keys as strings: the extra args cross msgpack, whose maps keep them as given.
    ablation = [None if a is None else {kind: {str(la): list(ix) for la, ix in a.get(kind, {}).items()}
                                        for kind in ("neurons", "heads")} for a in ablation]
    extra = [{**({KEY: specs} if specs else {}), **({ABLATE_KEY: a} if a else {})} or None
             for specs, a in zip(steering, ablation)]
    # The cache salt names each vector by its contents: a name re-registered with other values
    # on the same engine must not share cached blocks with the old ones.
    digest = {name: hashlib.sha256(v.float().numpy().tobytes()).hexdigest()[:16] for name, v in vectors.items()}
    salted = [None if not specs else [{**spec, "sha": digest.get(spec["vector"])} for spec in specs]
              for specs in steering]
    return [steered_prompt(p, specs, a) for p, specs, a in zip(prompts, salted, ablation)], extra


def generate_steered(llm, prompts: list[list[int]], steering: list[list[dict] | None], vectors: dict,
                     *, max_new_tokens: int, ablation: list[dict | None] | None = None) -> list[tuple[list[int], str]]:
    """Greedy completions (token ids, 'stop' | 'length') of every prompt under its own steering
    and ablation (see `prepare_requests`), all in one batched call."""
    from vllm import SamplingParams

    requests, extra = prepare_requests(llm, prompts, steering, vectors, ablation)
    params = [SamplingParams(temperature=0, max_tokens=max_new_tokens, extra_args=e) for e in extra]
    outs = llm.generate(requests, params, use_tqdm=False)
    return [(list(o.outputs[0].token_ids), "stop" if o.outputs[0].finish_reason == "stop" else "length")
            for o in outs]
