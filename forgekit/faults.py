"""Faults injected on purpose, for tests: one variable, `FORGEKIT_FAULTS`, off when unset.

`FORGEKIT_FAULTS="slow_step=1.5,die_after_step=3,node_per_worker=1"` (comma-separated `name=value`):

- `slow_step=S`: every optimizer step sleeps S seconds (to interrupt a run at a chosen point);
- `die_after_step=N`: after publishing the checkpoint of step N, rank 1 (else 0) exits once, as a lost worker
  would; Ray's FailureConfig restarts the workers, which resume from that checkpoint;
- `die_during_save=N`: rank 0 exits once while the checkpoint of step N is being written into the run directory
  (its part copied, not yet published), leaving what a kill at that moment leaves;
- `disk_full_at_save=N`: copying the checkpoint of step N into the run directory fails after its first file with
  `ENOSPC`, as on a full disk, at every attempt;
- `node_per_worker=1`: every worker acts as the only one of a node of its own, with its own staging dir, rank 1
  a second slower to publish its part, so that one machine exercises what a multi-node run does with checkpoints.

The launcher passes the driver's value to every worker of the run (`use`), so a test sets it per run; production
code calls these functions and they do nothing.
"""

from __future__ import annotations

import errno
import functools
import os
import time
from pathlib import Path

__all__ = ["die_after_checkpoint", "die_during_save", "disk_full", "node_per_worker", "slow_node", "slow_step", "use"]

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


def use(spec: str | None) -> None:
    """On a worker: the faults of the driver that launched the run (its `FORGEKIT_FAULTS`, passed with the run)."""
    os.environ[VARIABLE] = spec or ""


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


def _die_once(fault: str, run_dir: Path, step: int, dies: bool) -> None:
    """Exit this process (once per run: a marker in `run_dir`) where `dies` and `step` is the fault's step."""
    at = _get(fault)
    marker = Path(run_dir) / _DIED
    if at and int(at) == step and dies and not marker.exists():
        marker.touch()
        os._exit(1)


def die_after_checkpoint(run_dir: Path, step: int, rank: int, world: int) -> None:
    """Exit this process once (rank 1, else 0) after the checkpoint of step `die_after_step` is published."""
    _die_once("die_after_step", run_dir, step, rank == min(1, world - 1))


def die_during_save(run_dir: Path, step: int, rank: int) -> None:
    """Exit this process once (rank 0) while the checkpoint of step `die_during_save` is half-way into the run dir."""
    _die_once("die_during_save", run_dir, step, rank == 0)


def disk_full(step: int, copied: int, target: str | os.PathLike) -> None:
    """Raise ENOSPC for the copy of `target` when it is not the first file of step `disk_full_at_save`'s checkpoint."""
    at = _get("disk_full_at_save")
    if at and int(at) == step and copied:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
