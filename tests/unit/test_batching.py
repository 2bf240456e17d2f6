"""Tests for forgekit.plan's batch rule: the Silogen automatic batch size rule on a table of cases."""

from __future__ import annotations

import pytest

from forgekit.config import ConfigError
from forgekit.plan import derive_batch_sizes, describe_batch

# (total, max per device, world size) -> (per device, accumulation); worked out by hand:
# per worker = total / world; per device = the largest divisor of that which is <= max; accumulation = the rest.
CASES = [
    ((64, 8, 1), (8, 8)),
    ((64, 8, 2), (8, 4)),
    ((64, 8, 8), (8, 1)),
    ((64, 16, 8), (8, 1)),  # per worker 8 < max: no accumulation
    ((64, None, 4), (16, 1)),  # no maximum: the whole per-worker share at once
    ((48, 5, 1), (4, 12)),  # 5 does not divide 48: largest divisor <= 5 is 4
    ((36, 8, 3), (6, 2)),  # per worker 12; divisors <= 8: 1,2,3,4,6
    ((7, 4, 1), (1, 7)),  # prime total: micro batch 1
    ((1, 1, 1), (1, 1)),
    ((128, 32, 2), (32, 2)),
    ((30, 7, 2), (5, 3)),  # per worker 15; divisors <= 7: 1,3,5
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[str(c[0]) for c in CASES])
def test_rule(args, expected):
    total, max_per_device, world = args
    per_device, accum = derive_batch_sizes(total, max_per_device, world)
    assert (per_device, accum) == expected
    assert per_device * accum * world == total
    assert max_per_device is None or per_device <= max_per_device


@pytest.mark.parametrize(("total", "world"), [(10, 4), (7, 2), (3, 8)])
def test_indivisible_total_is_an_error(total, world):
    with pytest.raises(ConfigError) as info:
        derive_batch_sizes(total, 4, world)
    assert f"total_batch_size: {total} is not divisible by num_devices={world}" in str(info.value)
    assert f"use a multiple of {world}" in str(info.value)


def test_describe_batch():
    assert describe_batch(4, 2, 8) == (
        "batch: 64 examples per optimizer step = 8 worker(s) x 4 per device x 2 accumulation step(s)"
    )
