"""The benchmark harness's NVML device mapping: NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
run = pytest.importorskip("run")


class FakeNvml:
    """NVML's two lookups, returning which one was used and with what."""

    def nvmlDeviceGetHandleByIndex(self, i: int) -> str:
        return f"idx{i}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return f"uuid:{uuid}"


@pytest.mark.parametrize(("visible", "expected"), [
    (None, ["idx0", "idx1"]),                       # unset: every device of the host
    ("1", ["idx1"]),                                # the GPU-1 run polls GPU 1, not GPU 0
    ("1,0", ["idx1", "idx0"]),
    ("GPU-5a1c,GPU-77", ["uuid:GPU-5a1c", "uuid:GPU-77"]),
    ("", []),                                       # no device visible
])
def test_memory_poller_polls_the_visible_devices(monkeypatch: pytest.MonkeyPatch, visible, expected) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    nvml = FakeNvml()
    assert [run._nvml_handle(nvml, d) for d in run._visible_devices(2)] == expected


@pytest.mark.parametrize("workers", [1, 2, 4])
@pytest.mark.parametrize(("device", "tokens", "max_length", "rows"), [("cuda", 8192, 2048, 4), ("cpu", 2048, 512, 2)])
def test_forgekit_contender_does_the_same_tokens_per_step_for_any_number_of_workers(
        tmp_path: Path, workers: int, device: str, tokens: int, max_length: int, rows: int) -> None:
    """The tokens of one optimizer step are summed over the workers, as the single-process contenders do them."""
    contender = pytest.importorskip("forgekit_contender")
    spec = {"device": device, "tokens_per_step": tokens, "max_length": max_length, "data_stats": {"mean": 400},
            "model_dir": "m", "data": "d.jsonl", "steps": 4, "lr": 2e-4, "lora": {"r": 16}, "seed": 0}
    cfg = contender.forgekit_config(spec, {"workers": str(workers), "rows": str(rows)}, tmp_path)
    planned = cfg["num_devices"] * cfg["train_batch_size_per_device"] * cfg["gradient_accumulation_steps"] * max_length
    assert cfg["num_devices"] == workers and cfg["packing"]
    assert planned == max(tokens, workers * rows * max_length)  # one packed row per worker at the least


def test_the_padded_batch_contender_carries_the_tokens_per_step_of_the_others():
    """The hf contender counts examples per step; its micro-batch and accumulation are picked so that they carry
    the tokens per step the packed contenders take (456-token mean: 3 x 6 examples, 8,208 for 8,192; 4 x 4 would
    be 7,296, 11% short)."""
    contenders = pytest.importorskip("contenders")
    assert contenders.hf_batch(8192, 456) == (3, 6)
    for target, mean in ((8192, 456), (16384, 456), (4096, 300), (8192, 865)):
        b, a = contenders.hf_batch(target, mean)
        assert abs(b * a * mean - target) / target < 0.06, (target, mean, b, a)
    assert contenders.hf_batch(8192, 456, batch=4) == (4, 4)  # an explicit micro-batch is kept
