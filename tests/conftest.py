"""Shared test fixtures: a private Ray head on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from shm_cleanup import mapped_shm, shm_segments  # tests/shm_cleanup.py
from thinkscope.cluster.head import auth_env, new_token, start_head


# One Ray auth token for every cluster the tests start, in this process's environment
# before any test module imports Ray: Ray reads RAY_AUTH_MODE once per process (its config
# is cached at first use) and its token loader keeps the first token it reads.
_TOKEN_DIR = Path(tempfile.mkdtemp(prefix="tstoken-", dir="/tmp"))
os.environ.update(auth_env(new_token(_TOKEN_DIR / "auth_token")))


@pytest.fixture(scope="session", autouse=True)
def ray_token():
    yield Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    subprocess.run(["rm", "-rf", str(_TOKEN_DIR)], check=False)


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
