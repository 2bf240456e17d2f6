"""Faults injected on purpose, for tests: one variable, `FORGEKIT_FAULTS`, off when unset.

`FORGEKIT_FAULTS="slow_step=1.5,die_after_step=3,node_per_worker=1"` (comma-separated `name=value`):

- `slow_step=S`: every optimizer step sleeps S seconds (to interrupt a run at a chosen point);
- `die_after_step=N`: after publishing the checkpoint of step N, rank 1 (else 0) exits once, as a lost worker
  would; Ray's FailureConfig restarts the workers, which resume from that checkpoint;
- `node_per_worker=1`: every worker acts as the only one of a node of its own, with its own staging dir, rank 1
  a second slower to publish its part, so that one machine exercises what a multi-node run does with checkpoints.

The launcher passes the variable to every worker; production code calls these functions and they do nothing.
"""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path

__all__ = ["die_after_checkpoint", "node_per_worker", "slow_node", "slow_step"]

VARIABLE = "FORGEKIT_FAULTS"
_DIED = ".forgekit-test-died"


@functools.cache
def _faults(spec: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, value = item.partition("=")
        out[name.strip()] = value.strip() or "1"
    return out


def _get(name: str) -> str | None:
    return _faults(os.environ.get(VARIABLE, "")).get(name)


def slow_step() -> None:
    """Sleep `slow_step` seconds (after each optimizer step)."""
    seconds = float(_get("slow_step") or 0)
    if seconds:
        time.sleep(seconds)


def node_per_worker() -> bool:
    """Whether every worker plays a node of its own."""
    return _get("node_per_worker") not in (None, "0", "")


def slow_node(rank: int) -> None:
    """With `node_per_worker`, rank 1 gathers its checkpoint part a second late: nothing may be visible before."""
    if node_per_worker() and rank == 1:
        time.sleep(1.0)


def die_after_checkpoint(run_dir: Path, step: int, rank: int, world: int) -> None:
    """Exit this process once (rank 1, else 0) after the checkpoint of step `die_after_step` is published."""
    at = _get("die_after_step")
    marker = Path(run_dir) / _DIED
    if at and int(at) == step and rank == min(1, world - 1) and not marker.exists():
        marker.touch()
        os._exit(1)
