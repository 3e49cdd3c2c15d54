"""Which Ray a run uses, and leaving it as it was found.

"local": a private Ray on this machine (never a cluster that RAY_ADDRESS happens to name);
"auto": the running cluster (RAY_ADDRESS, or the one `ray start` left on this machine); anything
else: a cluster address (HOST:PORT of its head, or ray://HOST:10001). A process that called
ray.init itself keeps its Ray: the run uses it and leaves it running.
"""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def connected(address: str):
    import ray

    started = False
    if not ray.is_initialized():
        common = dict(logging_level=logging.WARNING, configure_logging=True)
        if address == "local":
            ray.init(address="local", include_dashboard=False, **common)
        else:
            ray.init(address=address, **common)
        started = True
    try:
        _quiet_data()
        yield ray
    finally:
        if started:
            ray.shutdown()


def _quiet_data() -> None:
    """The command line has its own progress bar and summary: Ray Data's bars and its per-run
    banner would interleave with them on stderr."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
