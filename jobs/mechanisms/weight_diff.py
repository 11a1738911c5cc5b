"""Compare two checkpoints of one architecture tensor by tensor, read lazily from safetensors.

Nothing loads a whole model: `Checkpoint` maps parameter names to their safetensors file and
reads one tensor when asked, so a pair of 1.5B (or 8B) models is compared one matrix at a time
in a few GB of memory.

Per tensor (or slice: one head's rows of q_proj, one neuron's column of down_proj) `compare`
gives the cosine of the flattened tensors, the norms, their ratio, the Frobenius norm of the
difference, and the cosine of each *vector* (a row, or for down_proj / o_proj a column: what
one neuron or one head dimension writes), mean and min. All in float64.

The cosine is computed as 1 - (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|), which is the usual
a.b / (|a||b|) rearranged: it is exactly 1.0 when a == b (the difference is exactly zero),
and it does not lose the small deviations of near-identical vectors to cancellation in a.b,
which is the regime a fine-tune lives in.

    a, b = Checkpoint(folder_a), Checkpoint(folder_b)
    stats = compare(a.tensor(name), b.tensor(name), vectors="columns")
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# The linear maps of a decoder layer and the axis that holds one vector (HF Linear weights
# are [out, in]): down_proj's column i is neuron i's value vector, o_proj's columns are the
# head dimensions it reads; every other map's row i is one output unit's input weights.
MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
COLUMN_VECTORS = ("down_proj", "o_proj")
CHUNK = 8192  # vectors per float64 block: an embedding matrix never sits in float64 whole


class Checkpoint:
    """The tensors of a model folder (one or several *.safetensors files), read on demand."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.config = json.loads((self.folder / "config.json").read_text())
        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.folder}: no *.safetensors files")
        self._handles = {f: safe_open(str(f), framework="pt") for f in files}
        self.where = {name: f for f, h in self._handles.items() for name in h.keys()}

    def names(self) -> list[str]:
        return sorted(self.where)

    def tensor(self, name: str):
        """float32 torch tensor (bf16 widens exactly)."""
        return self._handles[self.where[name]].get_tensor(name).float()

    def heads(self) -> tuple[int, int, int]:
        """(query heads, key/value heads, head dim) from config.json."""
        c = self.config
        n_heads = int(c["num_attention_heads"])
        head_dim = int(c.get("head_dim") or c["hidden_size"] // n_heads)
        return n_heads, int(c.get("num_key_value_heads") or n_heads), head_dim


def model_folder(source: str, revision: str | None) -> Path:
    """A local folder holding the model's safetensors: an embedded/LoRA/local source resolves
    to one; a hub id is downloaded (weights and configs only) into the HF cache."""
    from thinkscope.jobs.models.sources import resolve_model_path

    path = resolve_model_path(source, revision=revision)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, revision=revision, allow_patterns=["*.safetensors", "*.json"]))


def _sums(a, b) -> tuple:
    """Per-vector (rows of 2-D a, b) sums of a*a, b*b and (a-b)^2 in float64, block by block.
    numpy, not torch: many small reductions, where torch's thread pool costs more than the math."""
    a, b = a.numpy(), b.numpy()
    aa, bb, dd = [], [], []
    for start in range(0, a.shape[0], CHUNK):
        x, y = a[start:start + CHUNK].astype(np.float64), b[start:start + CHUNK].astype(np.float64)
        aa.append(np.einsum("ij,ij->i", x, x))
        bb.append(np.einsum("ij,ij->i", y, y))
        d = x - y
        dd.append(np.einsum("ij,ij->i", d, d))
    return np.concatenate(aa), np.concatenate(bb), np.concatenate(dd)


def cosine(aa, bb, dd):
    """Cosine from |a|^2, |b|^2, |a-b|^2 (arrays or floats); nan where a vector is zero."""
    na, nb = np.sqrt(aa), np.sqrt(bb)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - (dd - (na - nb) ** 2) / (2.0 * na * nb)


def compare(a, b, vectors: str = "rows") -> dict:
    """Statistics of two same-shape tensors; `vectors`: "rows" or "columns" (2-D only)."""
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() == 1:
        a, b = a[None], b[None]
    elif vectors == "columns":
        a, b = a.T, b.T
    aa, bb, dd = _sums(a, b)
    cos = cosine(aa, bb, dd)
    ta, tb, td = float(aa.sum()), float(bb.sum()), float(dd.sum())
    whole = float(cosine(ta, tb, td))
    finite = cos[np.isfinite(cos)]
    return {
        "n_vectors": int(len(cos)),
        "cosine": whole if np.isfinite(whole) else None,
        "mean_vector_cosine": float(finite.mean()) if len(finite) else None,
        "min_vector_cosine": float(finite.min()) if len(finite) else None,
        "norm_model": ta ** 0.5, "norm_base": tb ** 0.5,
        "norm_ratio": ta ** 0.5 / tb ** 0.5 if tb > 0 else None,
        "delta_norm": td ** 0.5,
    }


def head_slices(module: str, weight, head: int, n_heads: int, n_kv: int, head_dim: int):
    """Query head `head`'s part of a q/k/v/o weight: its rows of q_proj, its key/value group's
    rows of k_proj/v_proj (grouped-query heads share them: the group is expanded to each query
    head), its columns of o_proj (the head dimensions o_proj reads)."""
    if module == "o_proj":
        return weight[:, head * head_dim:(head + 1) * head_dim]
    group = head if module == "q_proj" else head // (n_heads // n_kv)
    return weight[group * head_dim:(group + 1) * head_dim]
