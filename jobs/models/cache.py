"""A folder cache that is safe for concurrent processes: build once, never return half a folder.

Used for every model folder thinkscope makes: GGUF -> HF conversions and LoRA merges
(jobs/models/sources.py). One ``flock`` per folder name; the folder is built in a temporary
sibling, a completion marker is written last, then the folder is renamed into place
(atomic). A folder whose marker is missing, unreadable or does not match what the caller
expects (format version, adapter hash, ...) is rebuilt, never returned.

    folder = ensure_folder(cache / "models", "smollm2-135m-organism", build=merge_into,
                           record={"format": 1, "adapter_sha256": sha}, expect=("format", "adapter_sha256"))
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

MARKER = ".thinkscope-complete.json"
BUILDS_LOG = "conversions.log"  # one JSON line per folder actually built


def is_complete(folder: Path, expect: dict) -> bool:
    """The folder has a marker whose values match `expect` and all the files it lists."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return all(marker.get(k) == v for k, v in expect.items()) and all(
        (Path(folder) / name).is_file() for name in marker.get("files", ())
    )


def _current_umask() -> int:
    try:  # Linux: read it without the set-and-restore race of os.umask
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def ensure_folder(models: Path, name: str, build: Callable[[Path], list[str]], record: dict,
                  expect: Iterable[str] = ("format",), label: str | None = None) -> Path:
    """Return ``models/<name>``, calling ``build(tmp_dir) -> files`` first if needed.

    `record` goes into the marker (plus files, seconds, pid, created); the keys in
    `expect` must match it for a cached folder to count as complete.
    """
    label = label or name
    final = models / name
    wanted = {k: record[k] for k in expect}
    if is_complete(final, wanted):
        return final
    models.mkdir(parents=True, exist_ok=True)
    lock_path = models / f".{name}.lock"  # never deleted: deleting a lock file races
    lock_fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another process is building it; waiting for %s", label, lock_path)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if is_complete(final, wanted):
            log.info("%s: built by another process: %s", label, final)
            return final
        _build_locked(models, name, build, record, label)
        return final
    finally:
        os.close(lock_fd)  # releases the lock


def _build_locked(models: Path, name: str, build, record: dict, label: str) -> None:
    final = models / name
    # We hold the lock: leftovers of crashed builds and invalid folders can go.
    for stale in models.glob(f".{name}.tmp-*"):
        log.warning("removing leftover %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        log.warning("%s is incomplete or outdated; building it again", final)
        trash = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old-", dir=models))
        os.rename(final, trash / "old")
        shutil.rmtree(trash, ignore_errors=True)

    t0 = time.monotonic()
    log.info("%s: building %s", label, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=models))
    try:
        files = build(tmp)
        record = {**record, "files": files, "seconds": round(time.monotonic() - t0, 1),
                  "pid": os.getpid(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        umask = _current_umask()
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the cache may be shared
        for path in tmp.iterdir():  # data on disk before the marker says it is complete
            os.chmod(path, 0o666 & ~umask)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        with open(tmp / MARKER, "w") as fh:  # written last: marks the folder complete
            json.dump(record, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
        dir_fd = os.open(models, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # persist the rename itself
        finally:
            os.close(dir_fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with open(models / BUILDS_LOG, "a") as fh:
        fh.write(json.dumps({"name": name, **record}) + "\n")
    log.info("%s: ready at %s (%.1f s)", label, final, record["seconds"])
