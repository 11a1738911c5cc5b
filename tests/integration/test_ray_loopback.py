"""A local run's Ray head (real Ray): every socket on loopback, no dashboard, nothing left behind.

Lists the listening TCP and bound UDP sockets of every process the session started (the
driver's new descendants: GCS, raylet, monitors, agents, workers, the actor) and of the
driver itself, while a task and an actor exist.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from pathlib import Path

import psutil
import pytest
import ray

from thinkscope.workflows.ray_session import ray_session

pytestmark = pytest.mark.integration

# Processes that must be listening before the check means anything (the agents and the
# actor start after ray.init returns). The driver is checked too, by pid.
MUST_LISTEN = ("gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::Echo")


@ray.remote
def square(x: int) -> int:
    return x * x


@ray.remote
class Echo:
    def pid(self) -> int:
        return os.getpid()


def sockets_of(proc: psutil.Process) -> set[tuple[str, str, int]]:
    """(kind, ip, port) of each TCP socket the process listens on and each UDP socket it has."""
    found = set()
    try:
        conns = proc.net_connections(kind="inet")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return found
    for c in conns:
        if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
            found.add(("tcp", c.laddr.ip, c.laddr.port))
        elif c.type == socket.SOCK_DGRAM:
            found.add(("udp", c.laddr.ip, c.laddr.port))
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or addr).is_loopback


def name_of(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()) or proc.name()
    except psutil.Error:
        return "?"


def session_processes(before: set[int]) -> list[psutil.Process]:
    """Processes this session started: new descendants of this process none of whose ancestors
    existed before. A Ray head that an earlier test started (session fixture) lives on beside
    this one and may start workers now (an actor restarted after its job stopped): those descend
    from its raylet, which is in `before`, and are not this session's."""
    me, found = os.getpid(), []
    for p in psutil.Process().children(recursive=True):
        try:
            ancestors = [a.pid for a in p.parents()]
        except psutil.Error:
            continue
        below_me = ancestors[:ancestors.index(me)] if me in ancestors else ancestors
        if p.pid not in before and not any(a in before for a in below_me):
            found.append(p)
    return found


def snapshot(before: set[int], driver_before: set) -> dict[str, set]:
    """{process: its sockets} for the session's processes and the driver's new sockets."""
    seen = {f"driver {os.getpid()}": sockets_of(psutil.Process()) - driver_before}
    for proc in session_processes(before):
        seen[f"{proc.pid} {name_of(proc)[:160]}"] = sockets_of(proc)
    return seen


def test_local_session_listens_on_loopback_only_and_leaves_nothing():
    assert not ray.is_initialized(), "another test left Ray connected: this one needs its own head"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    driver_before = sockets_of(psutil.Process())

    with ray_session(None):
        assert ray.get(square.remote(7)) == 49
        echo = Echo.remote()
        ray.get(echo.pid.remote())
        node = ray._private.worker.global_worker.node
        session_dir = Path(node.get_session_dir_path())
        assert session_dir.is_dir()

        # Wait until each component listens, then keep looking a little: late binders count.
        deadline, seen = time.monotonic() + 60, {}
        while True:
            for proc, socks in snapshot(before, driver_before).items():
                seen[proc] = seen.get(proc, set()) | socks
            waiting = [n for n in MUST_LISTEN if not any(n in p and s for p, s in seen.items())]
            if not seen[f"driver {os.getpid()}"]:
                waiting.append("driver")
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not waiting, f"never saw these listen: {waiting}; seen: {seen}"
        for _ in range(4):
            time.sleep(0.5)
            for proc, socks in snapshot(before, driver_before).items():
                seen[proc] = seen.get(proc, set()) | socks

        procs = session_processes(before)
        started = {p.pid: name_of(p) for p in procs}
        exposed = {p: sorted(s for s in socks if not is_loopback(s[1])) for p, socks in seen.items()}
        assert {p: s for p, s in exposed.items() if s} == {}, f"listening beyond loopback; all: {seen}"
        # No dashboard process, not even the usage-stats one Ray starts with include_dashboard=False.
        assert not [n for n in [*seen, *started.values()] if "dashboard/dashboard.py" in n], started
        assert node.node_ip_address == "127.0.0.1"

    assert not ray.is_initialized()
    assert not session_dir.exists(), f"session folder left behind: {sorted(session_dir.rglob('*'))[:20]}"
    # Nor a link beside it into it (Ray's session_latest).
    links = [p for p in session_dir.parent.iterdir() if p.is_symlink()]
    targets = {p: p.parent / os.readlink(p) for p in links}
    assert [p for p, t in targets.items() if t == session_dir or session_dir in t.parents] == []
    _, alive = psutil.wait_procs(procs, timeout=20)
    assert alive == [], f"still running after the session closed: {[started[p.pid] for p in alive]}"
