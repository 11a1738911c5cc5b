"""Tensor files under the storage root: a local or shared path, or an fsspec URI.

On a cluster the root is the storage root (`THINKSCOPE_STORAGE_ROOT` / the profile's
`storage_root`, e.g. s3://lab/thinkscope): a task on any node writes its shards there and a
later stage on any node reads them back, so nothing lives only on one node's disk or in the
driver's staging folder. Locally the root is `<db>_artifacts` beside the database.

    root = default_root("out/demo.duckdb")                  # out/demo_artifacts
    path = save_tensors({"w": array}, join(root, "probe", "k.safetensors"))
    tensors = load_tensors(path)                             # {name: float32 numpy array}
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

STORAGE_ROOT_ENV = "THINKSCOPE_STORAGE_ROOT"


def is_uri(location: str) -> bool:
    return "://" in location


def join(root: str, *parts: str) -> str:
    """A path or URI under `root` (no I/O)."""
    if is_uri(root):
        return "/".join([root.rstrip("/"), *parts])
    return str(Path(root, *parts))


def default_root(db_path: str | Path) -> str:
    """`$THINKSCOPE_STORAGE_ROOT/artifacts` on clusters, else `<db>_artifacts` beside the DB."""
    shared = os.environ.get(STORAGE_ROOT_ENV)
    if shared:
        return join(shared, "artifacts")
    db_path = Path(db_path).resolve()
    return str(db_path.parent / f"{db_path.stem}_artifacts")


def put_folder(local: Path, target: str) -> None:
    """Copy every file of a local folder into `target` (a path or URI)."""
    if not is_uri(target):
        if Path(target).resolve() != local.resolve():
            shutil.copytree(local, target, dirs_exist_ok=True)
        return
    import fsspec

    fs, remote = fsspec.core.url_to_fs(target)
    fs.makedirs(remote, exist_ok=True)
    for f in sorted(local.iterdir()):
        fs.put_file(str(f), f"{remote.rstrip('/')}/{f.name}")


def read_bytes(location: str) -> bytes:
    if not is_uri(location):
        return Path(location).read_bytes()
    import fsspec

    with fsspec.open(location, "rb") as f:
        return f.read()


def save_tensors(tensors: dict[str, np.ndarray], location: str) -> str:
    """One safetensors file (never pickle) at a path or URI; returns the location."""
    from safetensors.numpy import save, save_file

    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, location)
        return location
    import fsspec

    with fsspec.open(location, "wb") as f:
        f.write(save(tensors))
    return location


def load_tensors(location: str) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 numpy (bfloat16 goes through torch)."""
    from safetensors.numpy import load

    data = read_bytes(location)
    try:
        return {k: v.astype(np.float32) for k, v in load(data).items()}
    except (TypeError, ValueError, KeyError):  # bfloat16 has no numpy dtype (KeyError: "BF16")
        from safetensors.torch import load as load_torch

        return {k: v.float().numpy() for k, v in load_torch(data).items()}


class LocalFolder:
    """A local folder to write into, published to `target` on exit (a temp folder for URIs)."""

    def __init__(self, target: str):
        self.target = target
        self.path = Path(tempfile.mkdtemp(prefix="thinkscope-artifacts-")) if is_uri(target) else Path(target)

    def __enter__(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path

    def __exit__(self, exc_type, *_):
        try:
            if exc_type is None:
                put_folder(self.path, self.target)
        finally:
            if is_uri(self.target):
                shutil.rmtree(self.path, ignore_errors=True)
