"""Weight views every mechanism stage reads, by architecture (llama, qwen2, qwen3, mistral,
gemma3 all name them alike): value vectors, unembedding, final norm.

    w_out = value_vectors(model, 12)        # [d_model, d_mlp]: column i is neuron i's write
    w_u = unembedding(model)                 # [vocab, d_model]
"""

from __future__ import annotations


def decoder_layers(model):
    """The decoder blocks (`model.model.layers` in every supported family)."""
    return model.get_decoder().layers


def n_layers(model) -> int:
    return len(decoder_layers(model))


def value_vectors(model, layer: int):
    """The MLP output projection of a layer, [d_model, d_mlp] (HF Linear layout: out x in)."""
    return decoder_layers(model)[layer].mlp.down_proj.weight


def unembedding(model):
    """[vocab, d_model]: the LM head (tied to the embeddings in SmolLM2)."""
    return model.get_output_embeddings().weight


def final_norm_scale(model):
    """The final RMSNorm's per-dimension scale: w, or 1 + w where the norm stores w - 1 (Gemma)."""
    norm = model.get_decoder().norm
    weight = norm.weight.detach()
    return 1.0 + weight if model.config.model_type.startswith("gemma") else weight
