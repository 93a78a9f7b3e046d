"""How many threads torch gets in the server.

A batch's intra-op threads meet at a barrier after every op: when another process, or the
server's own event loop, decoding and encoding, takes one of their cores, every step waits for it.
On a loaded 2-core machine one 256-px `low` cloak took 25-90 s with 2 torch threads and 1.6-2.3 s
with 1 (issue #23). So one core is left to everything else, and the rest is shared by the workers.
"""
from __future__ import annotations

import os
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, within a cgroup v2 CPU quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_quota() -> int | None:
    try:
        limit, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(1, int(limit) // int(period))


def torch_threads(workers: int, cores: int) -> int:
    """Threads per batch: the cores less one, shared by the workers, at least one."""
    return max(1, (cores - 1) // workers)


def apply(requested: int, workers: int) -> int:
    """Set torch's threads (`requested`, or sized for `workers` when 0) before any batch thread
    starts: each new thread takes the count set here. Returns the count."""
    import torch

    threads = requested or torch_threads(workers, usable_cores())
    torch.set_num_threads(threads)
    return threads
