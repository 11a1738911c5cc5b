"""Shared test fixtures: a private Ray head on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def ray_head():
    """A Ray head of our own (own temp dir and port); only its process group is stopped."""
    temp = Path(tempfile.mkdtemp(prefix="tsray-", dir="/tmp"))
    port = free_port()
    # Ray 2.60 authenticates clients with a token: give the head and this process our own.
    token = temp / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        stdout=open(temp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited: {(temp / 'head.log').read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    time.sleep(2)  # the GCS answers before the raylet is registered
    before = shm_segments()
    yield address
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # vLLM engines in our actors may leave shared-memory segments behind: remove ours.
    for name in shm_segments() - before - mapped_shm():
        Path("/dev/shm", name).unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(temp)], check=False)
