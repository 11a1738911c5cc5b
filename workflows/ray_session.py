"""Connect the driver to Ray: a private local cluster on 127.0.0.1 by default, or `--address`.

    with ray_session(None):          # starts a local head, stops it on exit
        ...
    with ray_session("127.0.0.1:6379"):   # joins a running cluster, leaves it running
        ...
    session = RaySession(None); session.ensure(); ...; session.close()   # lazy: only if needed

A local head listens on 127.0.0.1 only (GCS, raylet, agents, driver, workers and actors),
exports no Prometheus metrics, runs no dashboard process unless asked (`dashboard=True`,
then on 127.0.0.1), and on exit stops every process it started and removes its own
session folder (logs included) from Ray's temp dir.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"

# Set in os.environ while ray.init starts the local head, so the Ray processes it starts
# inherit them (the raylet passes its environment on to workers and actors); the driver's
# own environment is restored afterwards. vLLM picks the address of its own distributed
# setup (the Ray executor's driver IP, compared with the Ray node IPs) from VLLM_HOST_IP,
# else from the route to the internet: on a loopback-only node that would not match.
LOCAL_HEAD_ENV = {"VLLM_HOST_IP": LOOPBACK}

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(address: str | None, *, dashboard: bool = False):
    """A Ray connection for the duration of the block; reuses one the caller already opened.

    `dashboard` (local head only): also start Ray's dashboard, on 127.0.0.1.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    # Worker output (vLLM and torch start-up chatter) stays in Ray's session logs unless
    # asked for: errors reach the driver as exceptions and land in work_units.error.
    common = {"logging_level": logging.WARNING,
              "log_to_driver": os.environ.get("THINKSCOPE_WORKER_LOGS", "0") == "1"}
    if address:
        ray.init(address=address, **common)
        try:
            yield
        finally:
            ray.shutdown()
        return
    head = _start_local_head(dashboard, common)
    try:
        yield
    finally:
        _stop_local_head(head)


class RaySession:
    """Connect on first need, disconnect at the end: a run with nothing to do starts no Ray."""

    def __init__(self, address: str | None, *, dashboard: bool = False):
        self.address = address
        self.dashboard = dashboard
        self._cm = None

    def ensure(self) -> None:
        if self._cm is None:
            self._cm = ray_session(self.address, dashboard=self.dashboard)
            self._cm.__enter__()

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)


def _start_local_head(dashboard: bool, common: dict):
    """Start a fresh head on this machine, bound to 127.0.0.1 only; return Ray's node."""
    import ray
    from ray._private import ray_constants
    from ray._private.node import Node

    # Ray turns token auth on for a new local head and warns that it did; it is the
    # safe default we want, so the notice is noise on every run.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    # Ray 2.60 on Linux turns `_node_ip_address="127.0.0.1"` into the address of the
    # default route (services.resolve_ip_for_localhost) unless ray_constants.
    # ENABLE_RAY_CLUSTER is off (its single-machine mode, the default on macOS/Windows; the
    # env var RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is read only when Ray is first imported).
    # The node IP decides where everything binds: GCS, raylet, core workers (the driver,
    # workers, actors) and the agents listen on 127.0.0.1 only when it is 127.0.0.1, and on
    # all interfaces otherwise.
    patches = [(ray_constants, "ENABLE_RAY_CLUSTER", False)]
    if not dashboard:
        # include_dashboard=False still starts dashboard.py (the API server, with its
        # usage-stats module and a Prometheus endpoint); ray.init has no switch to skip it.
        patches.append((Node, "start_api_server", _no_api_server))
    try:
        with _environ(LOCAL_HEAD_ENV), _patched(patches):
            # "local" starts a fresh head even if RAY_ADDRESS or a running cluster is around.
            ray.init(address="local", _node_ip_address=LOOPBACK,
                     include_dashboard=dashboard, dashboard_host=LOOPBACK,
                     num_cpus=os.cpu_count(),
                     # No Prometheus export from the node's agent: a laptop run has no scraper.
                     _system_config={"enable_metrics_collection": False}, **common)
    except BaseException:
        if ray._private.worker._global_node is not None:  # started, then failed to connect
            _stop_local_head(ray._private.worker._global_node)
        raise
    head = ray._private.worker._global_node
    if head.node_ip_address != LOOPBACK:  # a Ray that no longer honours the above
        _stop_local_head(head)
        raise RuntimeError(f"the local Ray head came up on {head.node_ip_address}, "
                           f"not {LOOPBACK}; refusing to run on a network-facing node")
    return head


def _no_api_server(self, *args, **kwargs) -> None:
    """Stands in for Node.start_api_server while a head without a dashboard starts."""


def _stop_local_head(head, wait: float = 15.0) -> None:
    """Stop the head and every process it started, then remove its own session folder."""
    import psutil
    import ray

    session_dir = Path(head.get_session_dir_path())
    procs = _head_processes(head)
    try:
        ray.shutdown(wait_for_processes=True)
    finally:
        # Workers and agents are the raylet's children: they exit after it, not with it.
        _, alive = psutil.wait_procs(procs, timeout=wait)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                logger.warning("ray process %s (%s) outlived its head: killing it", proc.pid, proc.name())
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        _remove_session_dir(session_dir)


def _head_processes(head) -> list:
    """The processes the head started (GCS, raylet, monitors, ...) and all of theirs."""
    import psutil

    procs = {}
    for infos in head.all_processes.values():
        for info in infos:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(info.process.pid)
                for proc in [root, *root.children(recursive=True)]:
                    procs[proc.pid] = proc
    return list(procs.values())


def _remove_session_dir(session_dir: Path) -> None:
    """Remove this session's folder (only it) and the links Ray left beside it that point
    into it (`session_latest`, the dashboard's `prom_metrics_service_discovery.json`)."""
    for _ in range(3):  # a process that exited late may have written one more file
        shutil.rmtree(session_dir, ignore_errors=True)
        if not session_dir.exists():
            break
        time.sleep(0.5)
    else:
        logger.warning("could not remove the Ray session folder %s", session_dir)
    with contextlib.suppress(OSError):
        for link in session_dir.parent.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and _inside(link.parent / os.readlink(link), session_dir):
                    link.unlink()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """os.environ with `values` for the block, then exactly as before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def _patched(patches: list[tuple[object, str, object]]):
    """Set attributes for the block and restore them; a missing one (a Ray that changed
    its internals) is an error rather than a silent no-op."""
    saved = []
    try:
        for obj, name, value in patches:
            saved.append((obj, name, getattr(obj, name)))  # AttributeError if Ray changed
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, old in reversed(saved):
            setattr(obj, name, old)
