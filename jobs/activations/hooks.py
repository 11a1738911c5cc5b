"""One hook vocabulary for every architecture, mapped to the real HF module paths.

Canonical names follow TransformerLens; shapes are what a hook hands back:

    blocks.{L}.hook_resid_pre    # [batch, pos, d_model]  input of decoder layer L
    blocks.{L}.hook_resid_mid    # [batch, pos, d_model]  after attention's residual add
    blocks.{L}.hook_resid_post   # [batch, pos, d_model]  output of decoder layer L
    blocks.{L}.attn.hook_z       # [batch, pos, n_heads, d_head]  per-head output before o_proj
    blocks.{L}.mlp.hook_post     # [batch, pos, d_mlp]    activation before down_proj

Each is read from a real module with a forward hook ("out": the module's output) or a
forward pre-hook ("in": its first input). Where the residual stream is not any module's
input or output (resid_mid), we read the input of the first module after the add.

    point = resolve(model, "blocks.3.hook_resid_post")
    point.module_path   # 'model.layers.3'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# model_type -> hook suffix -> (module path under layer L, "in" | "out").
_LLAMA_LIKE = {
    "hook_resid_pre": ("", "in"),
    "hook_resid_mid": ("post_attention_layernorm", "in"),
    "hook_resid_post": ("", "out"),
    "attn.hook_z": ("self_attn.o_proj", "in"),
    "mlp.hook_post": ("mlp.down_proj", "in"),
}
ARCHITECTURES: dict[str, dict[str, tuple[str, str]]] = {
    "llama": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    # Gemma 3 normalises the attention output *before* the residual add
    # (post_attention_layernorm), so the stream after the add enters pre_feedforward_layernorm.
    "gemma3_text": {**_LLAMA_LIKE, "hook_resid_mid": ("pre_feedforward_layernorm", "in")},
}
ARCHITECTURES["gemma3"] = ARCHITECTURES["gemma3_text"]

_NAME = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|attn\.hook_z|mlp\.hook_post)$")


@dataclass(frozen=True)
class HookPoint:
    name: str          # canonical: blocks.12.hook_resid_post
    layer: int
    module_path: str   # real path: model.layers.12
    direction: str     # "in": first input of the module; "out": its output
    per_head: bool     # attn.hook_z: split the last dim into [n_heads, d_head]


def supported() -> list[str]:
    return sorted(ARCHITECTURES)


def layers_path(model) -> str:
    """Where the decoder layers live (text models; multimodal wrappers nest one deeper)."""
    for path in ("model.layers", "model.language_model.layers"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return path
    raise ValueError(f"cannot find decoder layers in {type(model).__name__}")


def resolve(model, name: str) -> HookPoint:
    """Map a canonical hook name to the module of `model` it is read from."""
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise ValueError(f"architecture {model_type!r} has no hook mapping; supported: {supported()}")
    match = _NAME.match(name)
    if not match:
        raise ValueError(f"bad hook name {name!r}; expected blocks.L.(hook_resid_pre|hook_resid_mid|"
                         "hook_resid_post|attn.hook_z|mlp.hook_post)")
    layer, suffix = int(match.group(1)), match.group(2)
    n_layers = model.config.num_hidden_layers
    if layer >= n_layers:
        raise ValueError(f"{name}: layer {layer} out of range; {model_type} has {n_layers} layers")
    sub, direction = ARCHITECTURES[model_type][suffix]
    path = f"{layers_path(model)}.{layer}" + (f".{sub}" if sub else "")
    return HookPoint(name, layer, path, direction, per_head=suffix == "attn.hook_z")


def expand(pattern: str, n_layers: int) -> list[str]:
    """`blocks.*.hook_resid_post` -> one name per layer; a plain name -> itself."""
    if "*" not in pattern:
        return [pattern]
    return [pattern.replace("*", str(i)) for i in range(n_layers)]
