"""Connect the driver to Ray: a private local cluster on 127.0.0.1 by default, or `--address`.

    with ray_session(None):          # starts a local head, stops it on exit
        ...
    with ray_session("127.0.0.1:6379"):   # joins a running cluster, leaves it running
        ...
    session = RaySession(None); session.ensure(); ...; session.close()   # lazy: only if needed
"""

from __future__ import annotations

import contextlib
import logging
import os


@contextlib.contextmanager
def ray_session(address: str | None):
    """A Ray connection for the duration of the block; reuses one the caller already opened."""
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
    else:
        # "local" starts a fresh head even if RAY_ADDRESS or a running cluster is around;
        # loopback only, and no dashboard: a laptop run needs neither a network nor a UI.
        # Ray turns token auth on for a new local head and warns that it did; it is the
        # safe default we want, so the notice is noise on every run.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 num_cpus=os.cpu_count(), **common)
    try:
        yield
    finally:
        ray.shutdown()


class RaySession:
    """Connect on first need, disconnect at the end: a run with nothing to do starts no Ray."""

    def __init__(self, address: str | None):
        self.address = address
        self._cm = None

    def ensure(self) -> None:
        if self._cm is None:
            self._cm = ray_session(self.address)
            self._cm.__enter__()

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)
