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


sweep = pytest.importorskip("sweep")


def _run(tps: float, peak: float = 30.0, steps: int = 4, gpu: str = "NVIDIA H100 80GB HBM3 GPU-1a2b3c4d") -> dict:
    """A successful contender record at a steady `tps` real tokens/s."""
    return {"ok": True, "times": [float(i) for i in range(steps)], "tokens": [int(tps * i) for i in range(steps)],
            "losses": [2.0] * steps, "peak_alloc_gb": peak, "t_first_step": 20.0, "gpu": gpu, "wall_s": 30.0}


OOM = "OutOfMemoryError: CUDA out of memory. Tried to allocate 3.91 GiB"


def test_the_sweep_runs_every_setting_liger_off_first_and_by_increasing_memory():
    order = [sweep.option_string(s) for s in sweep.settings()]
    assert order == ["ckpt=1,batch=2,liger=0", "ckpt=1,batch=4,liger=0", "ckpt=0,batch=2,liger=0",
                     "ckpt=0,batch=4,liger=0", "ckpt=1,batch=2,liger=1", "ckpt=1,batch=4,liger=1",
                     "ckpt=0,batch=2,liger=1", "ckpt=0,batch=4,liger=1"]
    # within a Liger group, no setting needs less memory than one before it
    for group in (sweep.settings()[:4], sweep.settings()[4:]):
        assert all(not sweep.needs_at_least(a, b) or a == b for i, b in enumerate(group) for a in group[:i])
    assert sweep.describe({"ckpt": "0", "batch": "4", "liger": "1"}) == "batch 4, Liger, no checkpointing"


def test_a_setting_needing_more_memory_than_one_that_ran_out_is_skipped_not_run():
    ran_out = [{"ckpt": "0", "batch": "2", "liger": "0"}]
    assert sweep.skipped_by({"ckpt": "0", "batch": "4", "liger": "0"}, ran_out) == ran_out[0]
    assert sweep.skipped_by({"ckpt": "0", "batch": "2", "liger": "0"}, ran_out) == ran_out[0]
    for fits in ({"ckpt": "1", "batch": "4", "liger": "0"}, {"ckpt": "0", "batch": "4", "liger": "1"},
                 {"ckpt": "0", "batch": "2", "liger": "1"}):
        assert sweep.skipped_by(fits, ran_out) is None, fits  # less memory on some axis: it must run
    assert sweep.is_oom(OOM) and sweep.is_oom("RuntimeError: CUDA error: out of memory")
    assert not sweep.is_oom("ValueError: bad option") and not sweep.is_oom(None)


def test_the_fastest_setting_that_fits_wins_and_failures_are_rows():
    s = sweep.settings()
    records = [_run(4700, 18), _run(4900, 20), _run(6000, 45), {"ok": False, "error": OOM, "peak_alloc_gb": 78.9},
               _run(5000, 17), _run(5200, 19), _run(6000, 40), {"ok": False, "error": "RuntimeError: boom"}]
    rows = [sweep.sweep_row(st, r) for st, r in zip(s, records)]
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["out of memory"] + ["ok"] * 3 + ["error"]
    assert rows[3]["tokens_per_s"] is None and rows[3]["peak_alloc_gb"] == 78.9
    best = sweep.pick_best(rows)
    # 6,000 twice: the one needing less memory (Liger, 40 GB) wins over 45 GB
    assert best["options"] == "ckpt=0,batch=2,liger=1" and best["tokens_per_s"] == pytest.approx(6000)
    skipped = sweep.sweep_row(s[3], {"ok": False, "skipped": "needs at least the memory of ckpt=0,batch=2,liger=0"})
    assert skipped["status"] == "skipped" and not skipped["ok"]
    assert sweep.pick_best([rows[3], rows[7], skipped]) is None  # nothing ran: no winner, never a crash
    one_step = sweep.sweep_row(s[0], {"ok": True, "times": [1.0], "tokens": [100]})
    assert not one_step["ok"] and one_step["status"] == "error"


def test_medians_min_max_and_the_gpu_of_the_repeats():
    assert sweep.spread([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert sweep.spread([None]) == {"median": None, "min": None, "max": None, "n": 0}
    spec = {"flops_per_token": 5.0e10}
    row = run.aggregate("forgekit", [_run(10000), _run(12000), _run(11000), {"ok": False, "error": OOM}], spec, 989.0)
    assert row["tokens_per_s"] == pytest.approx(11000) and row["ok"] == 3 and row["repeats"] == 4
    assert (row["min_tokens_per_s"], row["max_tokens_per_s"]) == (pytest.approx(10000), pytest.approx(12000))
    assert row["gpus_used"] == ["NVIDIA H100 80GB HBM3 GPU-1a2b3c4d"]
    failed = run.aggregate("trl:ckpt=0,batch=4,liger=0", [{"ok": False, "error": OOM, "peak_alloc_gb": 79.0}], spec, 989.0)
    assert failed["out_of_memory"] and failed["peak_alloc_gb"] == 79.0


@pytest.mark.parametrize(("budget", "runs_after_sweep", "not_run"), [
    (1000, 8, []),
    # sweep 100 s, trl 30 s and forgekit 90 s a repeat: at 370 s the third forgekit (90 s) and hf (~55 s) do not fit 400
    (400, 5, ["forgekit (repeat 3", "hf:ckpt=0 (repeat 1"]),
])
def test_the_driver_falls_back_after_an_oom_runs_once_contenders_last_and_keeps_to_its_budget(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, budget: int, runs_after_sweep: int, not_run: list) -> None:
    """hf without checkpointing runs out of memory: the recipe with it runs in its place; `--once` contenders run
    after the repeats; a run that would overrun `--budget-s` is listed as not run, never started."""
    import json

    calls: list[str] = []
    clock = [0.0]

    def fake_child(name: str, work: Path, tag: str, timeout: float, extra: list[str] | None = None) -> dict:
        calls.append(name)
        if name == "trl-sweep":
            clock[0] += 100
            return {"ok": True, "settings": [
                {"setting": st, "ok": False, "error": OOM} if (st["batch"], st["ckpt"]) == ("4", "0")
                else {"setting": st, **_run(5000 + 100 * i)} for i, st in enumerate(json.loads(extra[1]))]}
        seconds = {"forgekit": 90, "hf": 50}.get(name.split(":")[0], 30)
        clock[0] += seconds
        if name == "hf:ckpt=0":
            return {"ok": False, "error": OOM, "wall_s": seconds}
        return _run(9000) | {"wall_s": seconds}

    spec = {"data_stats": {"n": 1, "p50": 1, "p95": 1, "mean": 1.0, "max": 1, "token_weighted_mean": 1.0},
            "flops_per_token": 1e9, "flops_per_token_full": 3e9}
    monkeypatch.setattr(run, "prepare", lambda args, work: spec)
    monkeypatch.setattr(run, "run_child", fake_child)
    monkeypatch.setattr(run.time, "time", lambda: clock[0])
    run.main(["--device", "cpu", "--trl-sweep", "--contenders", "trl:best", "forgekit", "hf:ckpt=0|hf:ckpt=1",
              "--once", "hf:ckpt=0|hf:ckpt=1", "--repeats", "3", "--budget-s", str(budget), "--work", str(tmp_path),
              "--out", str(tmp_path), "--tag", "t"])
    best = "trl:ckpt=0,batch=2,liger=1"  # the fastest of the sweep's settings that did not run out of memory
    assert calls == ["trl-sweep", *[best, "forgekit"] * 3, "hf:ckpt=0", "hf:ckpt=1"][:1 + runs_after_sweep]
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["meta"]["trl_best"] == best
    assert [n.split(")")[0].split(":")[0] for n in result["meta"]["not_run"]] == [n.split(":")[0] for n in not_run]
    rows = {r["contender"]: r for r in result["rows"]}
    md = (tmp_path / "t.md").read_text()
    assert "**at its best** (sweep winner): batch 2, Liger, no checkpointing" in md and "| **winner** |" in md
    if not not_run:
        assert rows["hf:ckpt=0"]["out_of_memory"] and rows["hf:ckpt=1"]["ok"] == 1 and rows[best]["ok"] == 3
        assert "| hf | padded, no checkpointing | out of memory" in md and "| 1.00× |" in md
