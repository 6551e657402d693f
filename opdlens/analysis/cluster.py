"""A Ray connection opened before any output is claimed, so a missing cluster is one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import OpdlensError
from .options import AnalyzeOptions

__all__ = ["ray_session"]


def import_ray() -> Any:
    """The ray module; OpdlensError with the install command when it is not installed."""
    try:
        import ray
    except ImportError:
        raise OpdlensError(
            "--executor ray needs Ray, which is not installed; install it with "
            "`pip install 'opdlens[ray]'` (or `pip install ray`)."
        ) from None
    return ray


@contextmanager
def ray_session(options: AnalyzeOptions) -> Iterator[None]:
    """Connect to the Ray cluster of `options` (executor 'ray') for the block, then disconnect.

    A no-op for the local executor, or when Ray is already initialised (its owner keeps it).
    Connecting first lets a command fail before it creates its output directory.

    Raises:
        OpdlensError: Ray is not installed, or no cluster answers at `options.address`.
    """
    if options.executor != "ray":
        yield
        return
    ray = import_ray()
    if ray.is_initialized():
        yield
        return
    address = options.address
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except ConnectionError as e:
        where = f"--address {address}" if address else "a new local Ray instance"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OpdlensError(
            f"--executor ray could not connect to {where}: {first} Start the cluster "
            "(`ray start --head`), pass the address of one that runs, or use --executor local."
        ) from None
    try:
        yield
    finally:
        ray.shutdown()
