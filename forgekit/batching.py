"""Automatic batch size (the Silogen engine's rule): total batch, per-device maximum, workers → micro batch.

Total batch size is the number of examples per optimizer step across all workers:
`total = world_size * per_device * accumulation`. Given a target total and the largest micro batch that fits
on one device, the same config runs on any number of workers: the per-device batch is the largest divisor of
`total / world_size` that fits, and accumulation makes up the rest.
"""

from __future__ import annotations

from forgekit.config import ConfigError

__all__ = ["derive_batch_sizes", "describe_batch"]


def derive_batch_sizes(total_batch_size: int, max_per_device: int | None, world_size: int) -> tuple[int, int]:
    """(per-device batch, gradient accumulation steps) for a target total batch size.

    Args:
        total_batch_size: examples per optimizer step over all workers.
        max_per_device: largest micro batch that fits on one device (None: no limit).
        world_size: number of training workers.

    Raises:
        ConfigError: the total is not a multiple of the number of workers.
    """
    if total_batch_size % world_size:
        raise ConfigError([
            f"total_batch_size: {total_batch_size} is not divisible by num_devices={world_size}; "
            f"use a multiple of {world_size}"
        ])
    per_worker = total_batch_size // world_size
    cap = min(per_worker, max_per_device or per_worker)
    per_device = max(d for d in range(1, cap + 1) if per_worker % d == 0)
    return per_device, per_worker // per_device


def describe_batch(per_device: int, accumulation: int, world_size: int) -> str:
    """One line for logs: how the total batch is made."""
    total = per_device * accumulation * world_size
    return (
        f"batch: {total} examples per optimizer step = {world_size} worker(s) x {per_device} per device "
        f"x {accumulation} accumulation step(s)"
    )
