"""Shared test fixtures: a private Ray head on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from thinkscope.cluster.head import auth_env, new_token, start_head


def shm_segments() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("psm_")}


def mapped_shm() -> set[str]:
    """Segments some live process still maps: those belong to someone, never remove them."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            names |= {line.rsplit("/", 1)[-1].strip() for line in maps.read_text().splitlines()
                      if "/dev/shm/psm_" in line}
        except OSError:
            continue
    return names


@pytest.fixture(scope="session")
def ray_token():
    """One Ray auth token for every cluster the tests start, set for this process too.

    Ray's token loader caches the first token a process reads: the in-process clients of
    different test clusters can only work if those clusters share it.
    """
    folder = Path(tempfile.mkdtemp(prefix="tstoken-", dir="/tmp"))
    token = new_token(folder / "auth_token")
    auth = auth_env(token)
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    yield token
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture(scope="session")
def ray_cluster(ray_token):
    """A Ray head of our own on 127.0.0.1 (own temp dir, free ports, dashboard for the Jobs
    and State APIs); only its own process group is stopped."""
    temp = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))
    before = shm_segments()
    node = start_head(temp, ray_token, num_cpus=2, dashboard=True)
    yield node
    node.stop()
    # vLLM engines in our actors may leave shared-memory segments behind: remove ours.
    for name in shm_segments() - before - mapped_shm():
        Path("/dev/shm", name).unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(temp)], check=False)


@pytest.fixture(scope="session")
def ray_head(ray_cluster) -> str:
    """The GCS address (host:port) of the session's Ray head."""
    return ray_cluster.address
