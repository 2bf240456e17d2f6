"""The benchmark harness's NVML device mapping: NVML numbers GPUs physically and ignores CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
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
