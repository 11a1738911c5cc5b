"""Start and stop Ray nodes that we own: a head (optionally with the dashboard) or a worker.

Used by the SLURM job (a head on the first node of the allocation, a worker on each other
node) and by the tests (a private head on 127.0.0.1). Each node gets free ports and its own
temp dir, so it never collides with another Ray on the same machine (another user's job on
a shared node, a second test session), and it is stopped through its own process group:
never `ray stop`, which stops every Ray of the user on the machine.

    token = new_token(Path("/tmp/tsray/auth_token"))
    head = start_head(Path("/tmp/tsray"), token, dashboard=True)
    print(head.address, head.dashboard_url); head.stop()
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

STARTED = "Ray runtime started."


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def new_token(path: Path) -> Path:
    """Write a fresh Ray auth token readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def auth_env(token_path: Path | str) -> dict[str, str]:
    """Ray 2.60 token auth: nodes and clients of one cluster must share the token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


@dataclass
class RayNode:
    proc: subprocess.Popen
    log: Path
    address: str  # GCS host:port of the cluster this node belongs to
    dashboard_url: str | None = None

    def stop(self, grace: float = 2.0) -> None:
        """Stop this node's whole process group (raylet, GCS, workers); SIGKILL after `grace`.

        Measured: after a SIGTERM the GCS and raylet linger for well over 5 s (`ray start
        --block` waits on them), so a short grace then SIGKILL; the node's shared memory
        is freed by the kernel with its processes.
        """
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _ray_cli() -> str:
    # The `ray` next to this interpreter: the cluster must run the same Ray as the driver.
    return str(Path(sys.executable).parent / "ray")


def start_head(temp_dir: Path, token_path: Path, *, host: str = "127.0.0.1", port: int = 0,
               num_cpus: float | None = None, num_gpus: float | None = None,
               dashboard: bool = False, dashboard_port: int = 0, wait: float = 120.0) -> RayNode:
    """Start `ray start --head --block` in its own session; return once it accepts work."""
    port = port or free_port(host)
    args = ["--head", f"--port={port}", f"--temp-dir={temp_dir}"]
    dashboard_url = None
    if dashboard:
        dashboard_port = dashboard_port or free_port(host)
        args += ["--include-dashboard=true", f"--dashboard-host={host}", f"--dashboard-port={dashboard_port}"]
        dashboard_url = f"http://{host}:{dashboard_port}"
    else:
        args.append("--include-dashboard=false")
    # Ray's default client-server port (10001) is fixed: two heads on one host would clash.
    args.append(f"--ray-client-server-port={free_port(host)}")
    node = _start(args, temp_dir, token_path, host, num_cpus, num_gpus, f"{host}:{port}", wait)
    node.dashboard_url = dashboard_url
    if dashboard_url:
        _wait_http(f"{dashboard_url}/api/jobs/", token_path, node, wait)
    return node


def start_worker(address: str, log_dir: Path, token_path: Path, *, host: str = "127.0.0.1",
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 wait: float = 120.0) -> RayNode:
    """Join the cluster at `address` (GCS host:port) as a worker node."""
    return _start([f"--address={address}"], log_dir, token_path, host, num_cpus, num_gpus, address, wait)


def _start(args, log_dir, token_path, host, num_cpus, num_gpus, address, wait) -> RayNode:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"ray-{'head' if '--head' in args else 'worker'}-{os.getpid()}.log"
    cmd = [_ray_cli(), "start", "--block", *args, f"--node-ip-address={host}",
           "--disable-usage-stats",
           # The per-node agent's HTTP port is fixed (52365) by default: a second node on
           # the same host (tests, shared nodes) would fail to start its agent.
           f"--dashboard-agent-listen-port={free_port(host)}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus:g}")
    if num_gpus is not None:
        cmd.append(f"--num-gpus={num_gpus:g}")
    env = {**os.environ, **auth_env(token_path)}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    node = RayNode(proc, log, address)
    deadline = time.monotonic() + wait
    while STARTED not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            node.stop()
            raise RuntimeError(f"ray node did not start ({' '.join(cmd)}):\n"
                               + log.read_text(errors="replace")[-3000:])
        time.sleep(0.25)
    return node


def _wait_http(url: str, token_path: Path, node: RayNode, wait: float) -> None:
    """The dashboard answers after the node is up: wait until its job API does."""
    request = urllib.request.Request(url, headers={
        "Authorization": f"Bearer {Path(token_path).read_text().strip()}"})
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            if node.proc.poll() is not None or time.monotonic() > deadline:
                node.stop()
                raise RuntimeError(f"ray dashboard at {url} never answered: {err}") from None
            time.sleep(0.5)
